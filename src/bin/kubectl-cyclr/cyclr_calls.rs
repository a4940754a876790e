//! The plugin's Cyclr calls, made with the partner's own credentials.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::{ExposeSecret, SecretString};

use cyclr::{ClientConfig, CyclrClient};

use super::{AuthArgs, Ctx, PluginError, SigninArgs, UsageArgs, kube_error, ready_account_id};
use cyclr_operator::resources::{CyclrApi, CyclrPartner};

/// Where people sign in for this partner: `spec.serviceURL` when set, else derived from
/// `spec.apiURL` by [`service_url_for`].
pub fn partner_service_url(partner: &CyclrPartner) -> String {
    service_url_for(&partner.spec.api_url, partner.spec.service_url.as_deref())
}

/// The sign-in host for an API URL: `service_url` when given; else `https://api.<rest>` of a
/// `cyclr.com` host becomes `https://my.<rest>` (`api.eu.cyclr.com` → `my.eu.cyclr.com`), and
/// any other URL gives its origin (scheme, host and port). No trailing slash.
pub fn service_url_for(api_url: &str, service_url: Option<&str>) -> String {
    if let Some(url) = service_url {
        return url.trim_end_matches('/').to_owned();
    }
    let (scheme, rest) = api_url.split_once("://").unwrap_or(("https", api_url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host.strip_prefix("api.") {
        Some(rest) if rest == "cyclr.com" || rest.ends_with(".cyclr.com") => format!("{scheme}://my.{rest}"),
        _ => format!("{scheme}://{host}"),
    }
}

/// The partner's Cyclr client, built from its credentials Secret read with the caller's
/// permissions; a missing permission is named.
async fn partner_client(ctx: &Ctx, partner: &CyclrPartner) -> Result<CyclrClient, PluginError> {
    let secret_ref = &partner.spec.credentials_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let partner_name = partner.metadata.name.clone().unwrap_or_default();
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            kube_error(
                e,
                "get",
                "secrets",
                Some(&ctx.operator_namespace),
                &format!(
                    "to read the credentials Secret {} of CyclrPartner {partner_name}",
                    secret_ref.name
                ),
            )
        })?
        .ok_or_else(|| {
            PluginError::Refused(format!(
                "Secret {}/{} of CyclrPartner {partner_name} not found (is --operator-namespace right?)",
                ctx.operator_namespace, secret_ref.name
            ))
        })?;
    let value = |key: &str| -> Result<String, PluginError> {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| {
                PluginError::Refused(format!(
                    "Secret {}/{} has no key {key}",
                    ctx.operator_namespace, secret_ref.name
                ))
            })
    };
    let client_id = value(&secret_ref.client_id_key)?;
    let client_secret = SecretString::from(value(&secret_ref.client_secret_key)?);
    let mut config = ClientConfig::new(partner.spec.api_url.clone(), client_id, client_secret);
    config.requests_per_second = partner.spec.rate_limit.requests_per_second;
    config.burst = partner.spec.rate_limit.burst;
    Ok(CyclrClient::new(config)?)
}

/// `kubectl cyclr signin`: the URL on `out` (stdout), its expiry on stderr so that
/// `$(kubectl cyclr signin …)` captures the URL alone. The token comes from the partner's
/// dialect: `POST /api/partner/createaccountsignintoken` on `Partner`,
/// `POST /v1.0/accounts/{id}/signintoken` on `V1` (both single use, five minutes).
pub(super) async fn signin(ctx: &Ctx, args: &SigninArgs, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let account = ctx.account(&args.account).await?;
    let account_id = ready_account_id(&account)?;
    let partner = ctx.partner(&account.spec.partner_ref.name).await?;
    let client = partner_client(ctx, &partner).await?;
    let token = match partner.spec.cyclr_api {
        CyclrApi::Partner => client.create_signin_token(&account_id, &args.username).await?,
        CyclrApi::V1 => client.create_signin_token_v1(&account_id, &args.username).await?,
    };
    let url = SecretString::from(format!(
        "{}/account/signinwithtoken?token={}",
        partner_service_url(&partner),
        token.token.expose_secret()
    ));
    let expires = token.expires_at_utc.0.with_timezone(&chrono::Local);
    writeln!(out, "{}", url.expose_secret()).map_err(io_error)?;
    eprintln!(
        "Single use; expires at {} (local time).",
        expires.format("%Y-%m-%d %H:%M:%S %Z")
    );
    if args.open {
        open_in_browser(&url)?;
    }
    Ok(())
}

/// `kubectl cyclr auth`: Cyclr's connector-auth page for the account connector with a fresh
/// sign-in token (single use, minutes), on `out` (stdout) only: a person opens it and signs
/// in to the OAuth provider. v1.0 calls, so a `V1` partner only.
pub(super) async fn auth(ctx: &Ctx, args: &AuthArgs, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let account = ctx.account(&args.account).await?;
    let account_id = ready_account_id(&account)?;
    let partner = ctx.partner(&account.spec.partner_ref.name).await?;
    if partner.spec.cyclr_api != CyclrApi::V1 {
        return Err(PluginError::Refused(format!(
            "CyclrPartner {} uses the Partner API, which has no account connectors to authenticate; cycles and their connectors need spec.cyclrAPI: V1",
            account.spec.partner_ref.name
        )));
    }
    let client = partner_client(ctx, &partner).await?;
    let connectors = client.list_account_connectors_v1(&account_id).await?;
    let wanted = &args.connector;
    let found: Vec<_> = connectors
        .iter()
        .filter(|c| &c.id == wanted || &c.name == wanted || &c.connector.name == wanted)
        .collect();
    let connector = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(PluginError::Refused(format!(
                "account {account_id} has no account connector {wanted:?} (id, name or connector name); it has: {}",
                connectors
                    .iter()
                    .map(|c| format!("{} ({}, id {})", c.name, c.connector.name, c.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        several => {
            return Err(PluginError::Refused(format!(
                "{} account connectors match {wanted:?} (ids {}); name one by its id",
                several.len(),
                several.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let service = partner_service_url(&partner);
    let token = client.create_signin_token_v1(&account_id, &args.username).await?;
    let url = SecretString::from(format!(
        "{service}/connectorauth/updateaccountconnectoroauth?id={}&token={}&targetOrigin={}",
        query_value(&connector.id),
        query_value(token.token.expose_secret()),
        query_value(args.target_origin.as_deref().unwrap_or(&service)),
    ));
    writeln!(out, "{}", url.expose_secret()).map_err(io_error)?;
    eprintln!(
        "Open it to authenticate {} ({}) in account {account_id}; single use, valid for minutes.",
        connector.name, connector.connector.name
    );
    Ok(())
}

/// `value` percent-encoded for a URL's query: everything but RFC 3986's unreserved characters.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn open_in_browser(url: &SecretString) -> Result<(), PluginError> {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    std::process::Command::new(opener)
        .arg(url.expose_secret())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| PluginError::Refused(format!("cannot run {opener} to open the URL: {e}")))
        .map(drop)
}

/// `kubectl cyclr price-plans`: ID and NAME, as Cyclr lists them now.
pub(super) async fn price_plans(ctx: &Ctx, partner: &str, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let partner = ctx.partner(partner).await?;
    let mut plans = partner_client(ctx, &partner).await?.price_plans().await?;
    plans.sort_by_key(|p| p.id.0);
    let rows: Vec<Vec<String>> = plans.iter().map(|p| vec![p.id.0.to_string(), p.name.clone()]).collect();
    super::status::write_table(out, &["ID", "NAME"], &rows).map_err(io_error)
}

/// `kubectl cyclr usage`: one line of usage for the period Cyclr reports.
pub(super) async fn usage(ctx: &Ctx, args: &UsageArgs, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let account = ctx.account(&args.account).await?;
    let account_id = account
        .account_id()
        .map(str::to_owned)
        .ok_or_else(|| PluginError::Refused(format!("CyclrAccount {} has no Cyclr account id yet", args.account)))?;
    let partner = ctx.partner(&account.spec.partner_ref.name).await?;
    let usage = partner_client(ctx, &partner)
        .await?
        .account_usage(&account_id, args.from)
        .await?;
    let date = |d: Option<cyclr::types::CyclrDate>| d.map_or("-".to_owned(), |d| d.0.format("%Y-%m-%d").to_string());
    let plan = usage.current_price_plan_id.map(|id| {
        let name = partner
            .status
            .as_ref()
            .and_then(|s| s.price_plans.iter().find(|p| p.id == id.0))
            .map_or(String::new(), |p| format!(" ({})", p.name));
        format!("{}{name}", id.0)
    });
    let row = vec![
        args.account.clone(),
        account_id,
        date(usage.from_date),
        date(usage.to_date),
        usage.task_count.to_string(),
        usage.cycle_count.to_string(),
        plan.unwrap_or_else(|| "-".into()),
    ];
    super::status::write_table(
        out,
        &["ACCOUNT", "ACCOUNT-ID", "FROM", "TO", "TASKS", "CYCLES", "PLAN"],
        &[row],
    )
    .map_err(io_error)
}

fn io_error(e: std::io::Error) -> PluginError {
    PluginError::Refused(format!("writing the output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{query_value, service_url_for};

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("https://my.cyclr.com"), "https%3A%2F%2Fmy.cyclr.com");
        assert_eq!(query_value("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(query_value("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn service_url_follows_the_api_host_or_the_override() {
        let cases = [
            ("https://api.cyclr.com", None, "https://my.cyclr.com"),
            ("https://api.eu.cyclr.com/", None, "https://my.eu.cyclr.com"),
            ("https://api.us2.cyclr.com/path", None, "https://my.us2.cyclr.com"),
            ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080"),
            (
                "https://cyclr.internal.example/api",
                None,
                "https://cyclr.internal.example",
            ),
            ("https://api.notcyclr.com", None, "https://api.notcyclr.com"),
            (
                "https://api.cyclr.com",
                Some("https://console.example/"),
                "https://console.example",
            ),
        ];
        for (api, service, want) in cases {
            assert_eq!(service_url_for(api, service), want, "{api} {service:?}");
        }
    }
}
