//! `kubectl cyclr`, the kubectl plugin for support and on-call engineers: sign-in URLs for
//! customers' Cyclr accounts, links that authenticate OAuth account connectors, one status
//! table of partners, accounts, installs and cycles, a partner's price plans and an
//! account's usage.
//!
//! It acts with the caller's own Kubernetes permissions (kubeconfig, context, impersonation as
//! kubectl picks them) and talks to Cyclr with the partner's credentials, read from the
//! partner's Secret in the operator's namespace. Nothing it prints to stderr or logs carries a
//! secret: sign-in URLs go to stdout only.
//!
//! kubectl finds this binary (`kubectl-cyclr`) on `PATH`. It is a program of its own, not part
//! of the operator's library: it shares only the resource types (`cyclr_operator::resources`).

mod cyclr_calls;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use cyclr_operator::resources::{CyclrAccount, CyclrPartner, READY, condition};

/// The namespace the operator runs in when `--operator-namespace` is not given.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "cyclr-system";

/// Cyclr accounts, connector installs and partners, for people.
#[derive(Parser, Debug)]
#[command(name = "kubectl-cyclr", bin_name = "kubectl cyclr", version)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The kubectl flags the plugin honours, with kubectl's meaning.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace of accounts and installs (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Username to impersonate, as `kubectl --as`.
    #[arg(long = "as", global = true)]
    pub as_user: Option<String>,
    /// Group to impersonate, as `kubectl --as-group` (repeatable).
    #[arg(long = "as-group", global = true)]
    pub as_groups: Vec<String>,
    /// Where the operator runs and keeps the partners' credentials Secrets.
    #[arg(long, global = true, env = "CYCLR_OPERATOR_NAMESPACE", default_value = DEFAULT_OPERATOR_NAMESPACE)]
    pub operator_namespace: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a single-use sign-in URL (valid for minutes) for a Ready CyclrAccount.
    Signin(SigninArgs),
    /// Print the one-time link a person opens to authenticate an OAuth account connector
    /// (one a cycle's template installed) of a Ready CyclrAccount on a `V1` partner.
    Auth(AuthArgs),
    /// Partners, accounts, connector installs and cycles in one table, with why anything is not Ready.
    Status(StatusArgs),
    /// A partner's price plans, as Cyclr lists them now.
    PricePlans(PricePlansArgs),
    /// An account's task and cycle usage for a period, as Cyclr reports it now.
    Usage(UsageArgs),
}

#[derive(Args, Debug)]
pub struct SigninArgs {
    /// The CyclrAccount's name.
    pub account: String,
    /// The Cyclr user to sign in as (Cyclr's `Username`).
    #[arg(long)]
    pub username: String,
    /// Also open the URL in the default browser (`xdg-open`, or `open` on macOS).
    #[arg(long)]
    pub open: bool,
}

#[derive(Args, Debug)]
pub struct AuthArgs {
    /// The CyclrAccount's name.
    pub account: String,
    /// The account connector: its id (as a CyclrCycle's `status.connectors` or its
    /// `ConnectorNotAuthenticated` message names it), or its connector's or installed name.
    pub connector: String,
    /// The Cyclr user the link signs in as (Cyclr's `Username`, made if missing).
    #[arg(long, default_value = "kubectl-cyclr")]
    pub username: String,
    /// The page Cyclr returns to once authenticated (`targetOrigin`); default: the sign-in
    /// host.
    #[arg(long)]
    pub target_origin: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Accounts and installs of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// `wide` adds the Ready message and the partner URL; `json` prints the rows as JSON.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<status::Output>,
}

#[derive(Args, Debug)]
pub struct PricePlansArgs {
    /// The CyclrPartner's name.
    #[arg(default_value = "default")]
    pub partner: String,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// The CyclrAccount's name.
    pub account: String,
    /// Start of the period, `YYYY-MM-DD` (default: the account's last bill date, as Cyclr
    /// decides).
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
}

/// What the plugin reports to its user instead of succeeding. Messages are meant to be read
/// as they are, and carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The caller lacks a Kubernetes permission.
    #[error(
        "forbidden: you cannot {verb} {resource}{} (needed {why}); ask for a Role granting \"{verb}\" on \"{resource}\"{}",
        namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        namespace.as_deref().map(|n| format!(" in {n}")).unwrap_or_default()
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: Option<String>,
        why: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Kubernetes(String),
    #[error("Cyclr: {0}")]
    Cyclr(#[from] ::cyclr::CyclrError),
}

/// Parses the command line and runs the command: exit code 0 on success, 1 with a message on
/// stderr otherwise.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli, &mut std::io::stdout()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Runs one command, writing its result to `out`.
pub async fn run(cli: Cli, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (client, default_namespace) = kube_client(&cli.kube).await?;
    let namespace = cli.kube.namespace.clone().unwrap_or(default_namespace);
    let ctx = Ctx {
        client,
        namespace,
        operator_namespace: cli.kube.operator_namespace.clone(),
    };
    match cli.command {
        Command::Signin(args) => cyclr_calls::signin(&ctx, &args, out).await,
        Command::Auth(args) => cyclr_calls::auth(&ctx, &args, out).await,
        Command::Status(args) => status::print(&ctx, &args, out).await,
        Command::PricePlans(args) => cyclr_calls::price_plans(&ctx, &args.partner, out).await,
        Command::Usage(args) => cyclr_calls::usage(&ctx, &args, out).await,
    }
}

/// What every command works with.
struct Ctx {
    client: Client,
    /// Where accounts and installs are looked up.
    namespace: String,
    /// Where partner credentials Secrets live.
    operator_namespace: String,
}

impl Ctx {
    async fn account(&self, name: &str) -> Result<CyclrAccount, PluginError> {
        let api: Api<CyclrAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get_opt(name).await {
            Ok(Some(account)) => Ok(account),
            Ok(None) => Err(PluginError::Refused(format!(
                "CyclrAccount {name} not found in namespace {}",
                self.namespace
            ))),
            Err(e) => Err(kube_error(
                e,
                "get",
                "cyclraccounts.cyclr.com",
                Some(&self.namespace),
                "to read the account",
            )),
        }
    }

    async fn partner(&self, name: &str) -> Result<CyclrPartner, PluginError> {
        let api: Api<CyclrPartner> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(partner)) => Ok(partner),
            Ok(None) => Err(PluginError::Refused(format!("CyclrPartner {name} not found"))),
            Err(e) => Err(kube_error(
                e,
                "get",
                "cyclrpartners.cyclr.com",
                None,
                "to read the partner",
            )),
        }
    }
}

/// The account's Cyclr id, refusing an account that is not Ready with its own reason.
fn ready_account_id(account: &CyclrAccount) -> Result<String, PluginError> {
    let name = account.metadata.name.clone().unwrap_or_default();
    let conditions = account.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    match condition(conditions, READY) {
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Err(PluginError::Refused(format!(
                "CyclrAccount {name} is not Ready ({}): {}",
                c.reason, c.message
            )));
        }
        None => {
            return Err(PluginError::Refused(format!(
                "CyclrAccount {name} is not Ready: the operator has not reported on it yet"
            )));
        }
    }
    account
        .account_id()
        .map(str::to_owned)
        .ok_or_else(|| PluginError::Refused(format!("CyclrAccount {name} has no Cyclr account id yet")))
}

/// A client as kubectl would build it: `--kubeconfig`, else `$KUBECONFIG` or
/// `~/.kube/config`, else in-cluster; `--context`, `--as` and `--as-group` on top. Also
/// returns the context's default namespace.
async fn kube_client(args: &KubeArgs) -> Result<(Client, String), PluginError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| PluginError::Kubernetes(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.map_err(|e| e.to_string()),
        (None, None) => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    let mut config = config.map_err(|e| PluginError::Kubernetes(format!("no usable Kubernetes configuration: {e}")))?;
    if let Some(user) = &args.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !args.as_groups.is_empty() {
        config.auth_info.impersonate_groups = Some(args.as_groups.clone());
    }
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| PluginError::Kubernetes(e.to_string()))?;
    Ok((client, namespace))
}

/// Turns a 403 into the permission it lacks; any other error keeps the server's message.
fn kube_error(
    error: kube::Error,
    verb: &'static str,
    resource: &'static str,
    namespace: Option<&str>,
    why: &str,
) -> PluginError {
    match &error {
        kube::Error::Api(status) if status.code == 403 => PluginError::Forbidden {
            verb,
            resource,
            namespace: namespace.map(str::to_owned),
            why: why.to_owned(),
        },
        _ => PluginError::Kubernetes(format!("{verb} {resource}: {error}")),
    }
}
