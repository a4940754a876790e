//! Cyclr's current API, v1.0: same host, token, rate budget, retries and observer as the
//! Partner API calls. Partner-level calls need only the token; account-level ones (account
//! connectors, cycles, template installs) also send `X-Cyclr-Account`. Sources of each fact
//! are in `shared/docs/cyclr-api-facts.md`, "The current v1.0 API".

use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Call, CyclrClient, Verb};
use crate::error::{CyclrError, Result};
use crate::types::{
    AccountConnector, AccountFieldsV1, AccountUsageV1, AccountV1, ActivateCycle, ConnectorAuth, Cycle, CycleVariable,
    Deleted, InstallAccountConnector, Prerequisite, Reauthenticate, SignInToken, Template,
};

impl CyclrClient {
    /// `GET /v1.0/accounts`, every page: all the partner's accounts, in Cyclr's order.
    pub async fn list_accounts_v1(&self) -> Result<Vec<AccountV1>> {
        self.list_accounts_v1_paced(|| std::future::ready(())).await
    }

    /// [`list_accounts_v1`](Self::list_accounts_v1), awaiting `before_page` before each
    /// page is requested: the caller spaces the pages of a long list (1,000 pages at 100,000
    /// accounts) so it takes only a share of the partner's rate budget.
    pub async fn list_accounts_v1_paced<F: Future<Output = ()>>(
        &self,
        before_page: impl FnMut() -> F,
    ) -> Result<Vec<AccountV1>> {
        self.list_all("list_accounts_v1", &["v1.0", "accounts"], None, before_page)
            .await
    }

    /// `GET /v1.0/accounts/{id}`: [`CyclrError::NotFound`] for an unknown id.
    pub async fn get_account_v1(&self, id: &str) -> Result<AccountV1> {
        let url = self.url(&["v1.0", "accounts", id]);
        self.send_json(Call::new("get_account_v1", Verb::Get, url)).await
    }

    /// `POST /v1.0/accounts` (`Name` required): the whole new account (200, observed).
    ///
    /// With a caller-chosen `fields.id` the create is idempotent, so it is retried like a read:
    /// a repeat of a create Cyclr applied answers [`CyclrError::IdInUse`], after which
    /// [`get_account_v1`](Self::get_account_v1) tells whose account it is. Without one it is
    /// never re-sent after an ambiguous failure ([`CyclrError::outcome_unknown`]).
    pub async fn create_account_v1(&self, fields: &AccountFieldsV1) -> Result<AccountV1> {
        let url = self.url(&["v1.0", "accounts"]);
        let mut call = Call::new("create_account_v1", Verb::Post, url).json(fields)?;
        if fields.id.is_none() {
            call = call.at_most_once();
        }
        self.send_json(call).await.map_err(|error| match error {
            CyclrError::Validation { status: 400, message }
                if message.to_ascii_lowercase().contains("already in use") =>
            {
                CyclrError::IdInUse { message }
            }
            error => error,
        })
    }

    /// `PUT /v1.0/accounts/{id}`: sends the fields that are set; the others keep their
    /// values. Answers the whole account as Cyclr stored it (retention clamped, `https://`
    /// added: compare through [`AccountFieldsV1::normalized`]).
    pub async fn update_account_v1(&self, id: &str, fields: &AccountFieldsV1) -> Result<AccountV1> {
        let url = self.url(&["v1.0", "accounts", id]);
        self.send_json(Call::new("update_account_v1", Verb::Put, url).json(fields)?)
            .await
    }

    /// `DELETE /v1.0/accounts/{id}`; a 404 is [`Deleted::AlreadyGone`]. Cyclr removes the
    /// account's connectors and cycles with it (inferred).
    pub async fn delete_account_v1(&self, id: &str) -> Result<Deleted> {
        self.delete("delete_account_v1", &["v1.0", "accounts", id], None).await
    }

    /// `GET /v1.0/accounts/{id}/usage`: tasks used in the current period.
    pub async fn account_usage_v1(&self, id: &str) -> Result<AccountUsageV1> {
        let url = self.url(&["v1.0", "accounts", id, "usage"]);
        self.send_json(Call::new("account_usage_v1", Verb::Get, url)).await
    }

    /// `POST /v1.0/accounts/{id}/signintoken` `{"Username"}`: a single-use token, valid for
    /// five minutes (Cyclr creates the user if missing). Never re-sent after an ambiguous
    /// failure.
    pub async fn create_signin_token_v1(&self, account_id: &str, username: &str) -> Result<SignInToken> {
        let url = self.url(&["v1.0", "accounts", account_id, "signintoken"]);
        let call = Call::new("create_signin_token_v1", Verb::Post, url)
            .json(&json!({ "Username": username }))?
            .at_most_once();
        self.send_json(call).await
    }

    /// `POST /v1.0/connectors/{connector}/install` into `account_id`, `connector` being the
    /// catalogue connector's id or name. Answers the account connector; never re-sent after an
    /// ambiguous failure (installing twice makes two). 400 for a name in use in the account,
    /// an unknown property, a draft connector.
    pub async fn install_connector_v1(
        &self,
        account_id: &str,
        connector: &str,
        request: &InstallAccountConnector,
    ) -> Result<AccountConnector> {
        let url = self.url(&["v1.0", "connectors", connector, "install"]);
        let call = Call::new("install_connector_v1", Verb::Post, url)
            .account(account_id)
            .json(request)?
            .at_most_once();
        self.send_json(call).await
    }

    /// `GET /v1.0/account/connectors`, every page: the account's connectors.
    pub async fn list_account_connectors_v1(&self, account_id: &str) -> Result<Vec<AccountConnector>> {
        self.list_all(
            "list_account_connectors_v1",
            &["v1.0", "account", "connectors"],
            Some(account_id),
            || std::future::ready(()),
        )
        .await
    }

    /// `GET /v1.0/account/connectors/{id}`: [`CyclrError::NotFound`] for an unknown id.
    pub async fn get_account_connector_v1(&self, account_id: &str, id: &str) -> Result<AccountConnector> {
        let url = self.url(&["v1.0", "account", "connectors", id]);
        self.send_json(Call::new("get_account_connector_v1", Verb::Get, url).account(account_id))
            .await
    }

    /// `PUT /v1.0/account/connectors/{id}` `{"AuthValue"}`: new credentials for an installed
    /// connector (e.g. a rotated API key). Answers the account connector, `Authenticated` as
    /// Cyclr now sees it. [`CyclrError::Config`] for [`ConnectorAuth::None`]: nothing to send.
    pub async fn reauthenticate_connector_v1(
        &self,
        account_id: &str,
        id: &str,
        auth: &ConnectorAuth,
    ) -> Result<AccountConnector> {
        let value = auth
            .auth_value()
            .ok_or_else(|| CyclrError::Config("re-authenticating needs credentials".into()))?;
        let url = self.url(&["v1.0", "account", "connectors", id]);
        let call = Call::new("reauthenticate_connector_v1", Verb::Put, url)
            .account(account_id)
            .json(&Reauthenticate(&value))?;
        self.send_json(call).await
    }

    /// `DELETE /v1.0/account/connectors/{id}`; a 404 is [`Deleted::AlreadyGone`].
    pub async fn delete_account_connector_v1(&self, account_id: &str, id: &str) -> Result<Deleted> {
        self.delete(
            "delete_account_connector_v1",
            &["v1.0", "account", "connectors", id],
            Some(account_id),
        )
        .await
    }

    /// `GET /v1.0/templates`, every page: the partner's templates.
    pub async fn list_templates_v1(&self) -> Result<Vec<Template>> {
        self.list_all("list_templates_v1", &["v1.0", "templates"], None, || {
            std::future::ready(())
        })
        .await
    }

    /// `GET /v1.0/templates/{id}`: [`CyclrError::NotFound`] for an unknown id.
    pub async fn get_template_v1(&self, id: &str) -> Result<Template> {
        let url = self.url(&["v1.0", "templates", id]);
        self.send_json(Call::new("get_template_v1", Verb::Get, url)).await
    }

    /// `POST /v1.0/templates/{id}/install` into `account_id`, named `name` or after the
    /// template: the new cycle, `Paused`. Installs the connectors the template needs,
    /// reusing an account connector of the same connector. Never re-sent after an ambiguous
    /// failure: installing twice makes two cycles. [`CyclrError::NotFound`] for an unknown
    /// template.
    pub async fn install_template_v1(&self, account_id: &str, template_id: &str, name: Option<&str>) -> Result<Cycle> {
        let url = self.url(&["v1.0", "templates", template_id, "install"]);
        let body = match name {
            Some(name) => json!({ "Name": name }),
            None => json!({}),
        };
        let call = Call::new("install_template_v1", Verb::Post, url)
            .account(account_id)
            .json(&body)?
            .at_most_once();
        self.send_json(call).await
    }

    /// `GET /v1.0/cycles`, every page: the account's cycles.
    pub async fn list_cycles_v1(&self, account_id: &str) -> Result<Vec<Cycle>> {
        self.list_all("list_cycles_v1", &["v1.0", "cycles"], Some(account_id), || {
            std::future::ready(())
        })
        .await
    }

    /// `GET /v1.0/cycles/{id}`: [`CyclrError::NotFound`] for an unknown id.
    pub async fn get_cycle_v1(&self, account_id: &str, id: &str) -> Result<Cycle> {
        let url = self.url(&["v1.0", "cycles", id]);
        self.send_json(Call::new("get_cycle_v1", Verb::Get, url).account(account_id))
            .await
    }

    /// `PUT /v1.0/cycles/{id}/activate` with its schedule. 400 while a
    /// [prerequisite](Self::cycle_prerequisites_v1) fails, or for an interval not in
    /// [`CYCLE_INTERVALS`](crate::types::CYCLE_INTERVALS).
    pub async fn activate_cycle_v1(&self, account_id: &str, id: &str, schedule: &ActivateCycle) -> Result<()> {
        let url = self.url(&["v1.0", "cycles", id, "activate"]);
        let call = Call::new("activate_cycle_v1", Verb::Put, url)
            .account(account_id)
            .json(schedule)?;
        self.send(&call).await?.expect_nothing()
    }

    /// `PUT /v1.0/cycles/{id}/deactivate?finishQueuedTransactions=…`: `true` lets queued work
    /// finish, `false` stops it now.
    pub async fn deactivate_cycle_v1(
        &self,
        account_id: &str,
        id: &str,
        finish_queued_transactions: bool,
    ) -> Result<()> {
        let mut url = self.url(&["v1.0", "cycles", id, "deactivate"]);
        url.query_pairs_mut()
            .append_pair("finishQueuedTransactions", &finish_queued_transactions.to_string());
        let call = Call::new("deactivate_cycle_v1", Verb::Put, url)
            .account(account_id)
            .json(&json!({}))?;
        self.send(&call).await?.expect_nothing()
    }

    /// `GET /v1.0/cycles/{id}/prerequisites`: what stops the cycle from being activated;
    /// empty when nothing does.
    pub async fn cycle_prerequisites_v1(&self, account_id: &str, id: &str) -> Result<Vec<Prerequisite>> {
        let url = self.url(&["v1.0", "cycles", id, "prerequisites"]);
        self.send_list(Call::new("cycle_prerequisites_v1", Verb::Get, url).account(account_id))
            .await
    }

    /// `GET /v1.0/cycles/{id}/variables`: the cycle's variables.
    pub async fn cycle_variables_v1(&self, account_id: &str, id: &str) -> Result<Vec<CycleVariable>> {
        let url = self.url(&["v1.0", "cycles", id, "variables"]);
        self.send_list(Call::new("cycle_variables_v1", Verb::Get, url).account(account_id))
            .await
    }

    /// `PUT /v1.0/cycles/{id}/variables/{system_name}` `{"Value", "MappingType":
    /// "StaticValue"}`: the variable as stored. [`CyclrError::Conflict`] while the cycle is
    /// Active: deactivate, set, activate again.
    pub async fn set_cycle_variable_v1(
        &self,
        account_id: &str,
        id: &str,
        system_name: &str,
        value: &str,
    ) -> Result<CycleVariable> {
        let url = self.url(&["v1.0", "cycles", id, "variables", system_name]);
        let call = Call::new("set_cycle_variable_v1", Verb::Put, url)
            .account(account_id)
            .json(&json!({ "Value": value, "MappingType": "StaticValue" }))?;
        self.send_json(call).await
    }

    /// `DELETE /v1.0/cycles/{id}` (its transactions go with it); a 404 is
    /// [`Deleted::AlreadyGone`]. The cycle may show `DeleteScheduled` for a while.
    pub async fn delete_cycle_v1(&self, account_id: &str, id: &str) -> Result<Deleted> {
        self.delete("delete_cycle_v1", &["v1.0", "cycles", id], Some(account_id))
            .await
    }

    /// Every page of a v1.0 list (`?page=N&pageSize=S`, bare arrays), until one is shorter
    /// than `S`; `before_page` is awaited before each request. A page longer than `S` means
    /// the server ignored the paging and sent it all, so it is the last too; a page the same
    /// as the one before means it ignored `page` ([`CyclrError::Decode`], rather than reading
    /// forever). An element deleted between two
    /// pages can move one not read yet onto a page already read: a list is a snapshot that
    /// may miss what changed while it was read.
    async fn list_all<T: DeserializeOwned, F: Future<Output = ()>>(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        account_id: Option<&str>,
        mut before_page: impl FnMut() -> F,
    ) -> Result<Vec<T>> {
        let size = self.inner.config.page_size as usize;
        let mut all = Vec::new();
        let mut previous = Vec::new();
        let mut page = 1u32;
        loop {
            let mut url = self.url(segments);
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("pageSize", &size.to_string());
            let mut call = Call::new(endpoint, Verb::Get, url);
            if let Some(account_id) = account_id {
                call = call.account(account_id);
            }
            before_page().await;
            let answer = self.send(&call).await?;
            if page > 1 && answer.body == previous {
                return Err(CyclrError::Decode(format!(
                    "{endpoint}: page {page} is page {} again: the server ignores `page`",
                    page - 1
                )));
            }
            let body = answer.body.clone();
            let items: Vec<T> = answer.decode(endpoint, |body| serde_json::from_slice(body))?;
            let read = items.len();
            all.extend(items);
            if read != size {
                return Ok(all);
            }
            previous = body;
            page += 1;
        }
    }

    /// A DELETE, where 404 means done before.
    async fn delete(&self, endpoint: &'static str, segments: &[&str], account_id: Option<&str>) -> Result<Deleted> {
        let mut call = Call::new(endpoint, Verb::Delete, self.url(segments));
        if let Some(account_id) = account_id {
            call = call.account(account_id);
        }
        match self.send(&call).await {
            Ok(answer) => answer.expect_nothing().map(|()| Deleted::Deleted),
            Err(CyclrError::NotFound { .. }) => Ok(Deleted::AlreadyGone),
            Err(error) => Err(error),
        }
    }
}
