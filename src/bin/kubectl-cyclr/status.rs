//! `kubectl cyclr status`: partners, accounts, installs and cycles in one sorted table.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use super::{Ctx, PluginError, StatusArgs, kube_error};
use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, CyclrCycle, CyclrPartner, READY, condition};

/// `-o` of `kubectl cyclr status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Json,
}

/// One line of the table; `-o json` prints these as they are.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// `CyclrPartner`, `CyclrAccount`, `CyclrConnectorInstall` or `CyclrCycle`.
    kind: &'static str,
    namespace: String,
    name: String,
    /// The Ready condition's status (`True`, `False`, `Unknown`), or `-` before the first report.
    ready: String,
    /// The Ready reason, for anything not Ready.
    reason: String,
    message: String,
    /// Accounts: their Cyclr id; installs: their account's; cycles: their own; partners: the
    /// API URL.
    #[serde(rename = "accountID")]
    account_id: String,
    /// Accounts: the price plan's name (or id when the partner does not list it); installs:
    /// the connector; cycles: the account, the template and Cyclr's status.
    plan: String,
    tasks: Option<u64>,
    cycles: Option<u64>,
    /// Partners: their account count in Cyclr.
    accounts: Option<u32>,
}

pub(super) async fn print(ctx: &Ctx, args: &StatusArgs, out: &mut dyn std::io::Write) -> Result<(), PluginError> {
    let scope = (!args.all_namespaces).then_some(ctx.namespace.as_str());
    let partners = Api::<CyclrPartner>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_error(e, "list", "cyclrpartners.cyclr.com", None, "to show partners"))?
        .items;
    let accounts = list::<CyclrAccount>(ctx, scope, "cyclraccounts.cyclr.com").await?;
    let installs = list::<CyclrConnectorInstall>(ctx, scope, "cyclrconnectorinstalls.cyclr.com").await?;
    // Roles written before cycles existed may not grant them: the rest is shown all the same.
    let cycles = match list::<CyclrCycle>(ctx, scope, "cyclrcycles.cyclr.com").await {
        Err(PluginError::Forbidden { .. }) => Vec::new(),
        listed => listed?,
    };

    let mut rows = Vec::new();
    for p in &partners {
        let status = p.status.clone().unwrap_or_default();
        rows.push(Row {
            accounts: status.account_count,
            account_id: p.spec.api_url.clone(),
            ..row("CyclrPartner", &p.metadata, &status.conditions)
        });
    }
    for a in &accounts {
        let status = a.status.clone().unwrap_or_default();
        let plan = status.price_plan_id.map(|id| {
            partners
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(a.spec.partner_ref.name.as_str()))
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.price_plans.iter().find(|plan| plan.id == id))
                .map_or_else(|| id.to_string(), |plan| plan.name.clone())
        });
        rows.push(Row {
            account_id: a.account_id().unwrap_or("-").to_owned(),
            plan: plan.unwrap_or_else(|| "-".into()),
            tasks: status.usage.as_ref().map(|u| u.task_count),
            cycles: status.usage.as_ref().map(|u| u.cycle_count),
            ..row("CyclrAccount", &a.metadata, &status.conditions)
        });
    }
    for i in &installs {
        let status = i.status.clone().unwrap_or_default();
        rows.push(Row {
            account_id: status.account_id.clone().unwrap_or_else(|| "-".into()),
            plan: format!("{} {}", i.spec.connector_name, i.spec.connector_version),
            ..row("CyclrConnectorInstall", &i.metadata, &status.conditions)
        });
    }
    for c in &cycles {
        let status = c.status.clone().unwrap_or_default();
        let template = c.spec.template_ref.name.as_ref().or(c.spec.template_ref.id.as_ref());
        rows.push(Row {
            account_id: status.cycle_id.clone().unwrap_or_else(|| "-".into()),
            plan: format!(
                "{}/{} {}",
                c.spec.account_ref.name,
                template.map_or("-", String::as_str),
                status.cyclr_status.as_deref().unwrap_or("-")
            ),
            tasks: status.tasks_used,
            ..row("CyclrCycle", &c.metadata, &status.conditions)
        });
    }
    // Partners first, then accounts, installs and cycles; each by namespace and name.
    let rank = |kind: &str| {
        ["CyclrPartner", "CyclrAccount", "CyclrConnectorInstall", "CyclrCycle"]
            .iter()
            .position(|k| *k == kind)
    };
    rows.sort_by(|a, b| (rank(a.kind), &a.namespace, &a.name).cmp(&(rank(b.kind), &b.namespace, &b.name)));

    let written = match args.output {
        Some(Output::Json) => serde_json::to_writer_pretty(&mut *out, &rows)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        wide => {
            let wide = wide == Some(Output::Wide);
            let mut header = vec![
                "KIND",
                "NAMESPACE",
                "NAME",
                "READY",
                "ID/URL",
                "PLAN",
                "TASKS",
                "CYCLES",
                "ACCOUNTS",
                "REASON",
            ];
            if wide {
                header.push("MESSAGE");
            }
            let dash = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let lines: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut line = vec![
                        r.kind.to_owned(),
                        or_dash(&r.namespace),
                        r.name.clone(),
                        r.ready.clone(),
                        r.account_id.clone(),
                        r.plan.clone(),
                        dash(r.tasks),
                        dash(r.cycles),
                        dash(r.accounts.map(u64::from)),
                        or_dash(&r.reason),
                    ];
                    if wide {
                        line.push(or_dash(&r.message));
                    }
                    line
                })
                .collect();
            write_table(out, &header, &lines)
        }
    };
    written.map_err(|e| PluginError::Refused(format!("writing the output: {e}")))
}

async fn list<K>(ctx: &Ctx, namespace: Option<&str>, resource: &'static str) -> Result<Vec<K>, PluginError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    api.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|e| kube_error(e, "list", resource, namespace, "to show their status"))
}

/// The columns every kind shares; reason and message only when not Ready.
fn row(kind: &'static str, meta: &kube::api::ObjectMeta, conditions: &[Condition]) -> Row {
    let ready = condition(conditions, READY);
    let not_ready = ready.filter(|c| c.status != "True");
    Row {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        ready: ready.map_or_else(|| "-".to_owned(), |c| c.status.clone()),
        reason: not_ready.map(|c| c.reason.clone()).unwrap_or_default(),
        message: not_ready.map(|c| c.message.clone()).unwrap_or_default(),
        account_id: String::new(),
        plan: "-".into(),
        tasks: None,
        cycles: None,
        accounts: None,
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_owned() }
}

/// Left-aligned columns two spaces apart, as kubectl prints them.
pub(super) fn write_table(out: &mut dyn std::io::Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
