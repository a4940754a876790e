//! The test control plane is a real Kubernetes API server: these are behaviours no mock
//! reproduces, checked against the one started by `cyclr_testenv`.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;

use cyclr_testenv::TestEnv;

const TIMEOUT: Duration = Duration::from_secs(30);

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let env = TestEnv::get().await;
    let ns = env.new_namespace("ssa").await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), &ns);
    let config_map = |value: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "settings" },
            "data": { "mode": value },
        })
    };

    let applied = api
        .patch(
            "settings",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(config_map("fast")),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["mode"], "fast");
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|entry| (entry.manager.unwrap(), entry.operation.unwrap()))
        .collect();
    assert_eq!(managers, [("manager-a".to_owned(), "Apply".to_owned())]);

    // Another manager may not take a field over unless it forces the apply.
    let conflict = api
        .patch(
            "settings",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(config_map("safe")),
        )
        .await;
    let status = api_error(conflict);
    assert_eq!(status.code, 409, "{status:?}");
    assert!(status.message.contains("manager-a"), "{}", status.message);

    let forced = api
        .patch(
            "settings",
            &PatchParams::apply("manager-b").force(),
            &Patch::Apply(config_map("safe")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["mode"], "safe");
}

#[tokio::test]
async fn watch_sees_a_change() {
    let env = TestEnv::get().await;
    let ns = env.new_namespace("watch").await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), &ns);
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "watched" },
                "data": { "generation": "1" },
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // Watching from the created object's resourceVersion: the change below must arrive as
    // an event, not from a re-list.
    let version = created.metadata.resource_version.unwrap();
    let params = WatchParams::default().fields("metadata.name=watched");
    let mut events = api.watch(&params, &version).await.unwrap().boxed();
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "generation": "2" } })),
    )
    .await
    .unwrap();

    let modified = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let WatchEvent::Modified(cm) = event {
                return cm;
            }
        }
        panic!("watch ended without a Modified event");
    })
    .await
    .expect("no Modified event within the timeout");
    assert_eq!(modified.data.unwrap()["generation"], "2");
}

#[tokio::test]
async fn cel_validation_rejects_a_bad_object() {
    let env = TestEnv::get().await;
    let ns = env.new_namespace("cel").await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.testenv.cyclr.io" },
        "spec": {
            "group": "testenv.cyclr.io",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["minReplicas", "maxReplicas"],
                        "properties": {
                            "minReplicas": { "type": "integer" },
                            "maxReplicas": { "type": "integer" },
                        },
                        "x-kubernetes-validations": [{
                            "rule": "self.minReplicas <= self.maxReplicas",
                            "message": "minReplicas must not exceed maxReplicas",
                        }],
                    }},
                }},
            }],
        },
    });
    crds.patch(
        "widgets.testenv.cyclr.io",
        &PatchParams::apply("control-plane-test").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap();

    let gvk = GroupVersionKind::gvk("testenv.cyclr.io", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(env.client(), &ns, &ApiResource::from_gvk(&gvk));
    let widget = |name: &str, min: i64, max: i64| {
        serde_json::from_value::<DynamicObject>(json!({
            "apiVersion": "testenv.cyclr.io/v1",
            "kind": "Widget",
            "metadata": { "name": name },
            "spec": { "minReplicas": min, "maxReplicas": max },
        }))
        .unwrap()
    };

    // A new CRD is served a moment after it is stored; until then creates answer 404.
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match widgets.create(&PostParams::default(), &widget("good", 1, 3)).await {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => panic!("creating a valid Widget: {err}"),
            }
        }
    })
    .await
    .expect("the Widget CRD was never served");

    let rejected = widgets.create(&PostParams::default(), &widget("bad", 5, 2)).await;
    let status = api_error(rejected);
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("minReplicas must not exceed maxReplicas"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn rbac_denies_an_impersonated_service_account() {
    let env = TestEnv::get().await;
    let ns = env.new_namespace("rbac").await;
    let admin = env.client();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "reader" } })).unwrap(),
        )
        .await
        .unwrap();

    let user = format!("system:serviceaccount:{ns}:reader");
    let mut config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(env.kubeconfig_path()).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some(user.clone());
    let reader = Client::try_from(config).unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns);

    let denied = api_error(config_maps.list(&ListParams::default()).await);
    assert_eq!(denied.code, 403, "{denied:?}");
    assert!(
        denied
            .message
            .contains(&format!("User \"{user}\" cannot list resource \"configmaps\"")),
        "{}",
        denied.message
    );

    // RBAC really evaluates rules: a Role granting ConfigMaps opens exactly those.
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "config-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"] }],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "reader" },
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "config-reader",
                },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns }],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // The authorizer reads roles from an informer cache, so the grant lands a moment later.
    tokio::time::timeout(TIMEOUT, async {
        while config_maps.list(&ListParams::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the RoleBinding never took effect");

    let secrets: Api<Secret> = Api::namespaced(reader, &ns);
    let denied = api_error(secrets.list(&ListParams::default()).await);
    assert_eq!(denied.code, 403, "{denied:?}");
}
