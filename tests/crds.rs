//! `crds/` must hold exactly what `cyclr-operator crd` prints: run `make manifests` after
//! changing a resource type.

#[test]
fn committed_crds_match_the_resource_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/cyclr.com_crds.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/cyclr.com_crds.yaml exists");
    assert!(
        committed == cyclr_operator::resources::crds_yaml(),
        "crds/ is out of date with the resource types: run `make manifests`"
    );
}

/// docs/api.md is the API reference written from the CRDs: run `make manifests` after
/// changing a resource type.
#[test]
fn api_reference_matches_the_crds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let committed = std::fs::read_to_string(path).expect("docs/api.md exists");
    assert!(
        committed == cyclr_operator::resources::api_reference(),
        "docs/api.md is out of date with the resource types: run `make manifests`"
    );
}

/// `kubectl explain <kind>` starts with the kind's own description.
#[test]
fn every_kind_has_its_own_description() {
    for crd in cyclr_operator::resources::all_crds() {
        let kind = crd.spec.names.kind.clone();
        for version in &crd.spec.versions {
            let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
            let description = schema.and_then(|s| s.description.as_deref()).unwrap_or_default();
            assert!(
                description.len() > 80 && !description.contains("Auto-generated"),
                "{kind} {}: {description:?}",
                version.name
            );
        }
    }
}

#[test]
fn crds_carry_names_columns_and_validation() {
    let yaml = cyclr_operator::resources::crds_yaml();
    for expected in [
        "shortNames:\n    - cyp",
        "shortNames:\n    - cya",
        "shortNames:\n    - cyci",
        "- cyclr",
        "name: Account-ID",
        "jsonPath: .status.accountID",
        "jsonPath: .status.pricePlanID",
        "jsonPath: .spec.apiURL",
        "x-kubernetes-validations",
        "subresources:\n      status: {}",
    ] {
        assert!(yaml.contains(expected), "CRDs lack {expected:?}");
    }
}

/// `kubectl explain` documents the whole API: every property of every CRD has a description.
#[test]
fn every_crd_property_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, checked: &mut Vec<String>, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, property) in properties {
                let path = format!("{path}.{name}");
                checked.push(path.clone());
                let described = property
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(path.clone());
                }
                walk(&path, property, checked, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, checked, missing);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            walk(&format!("{path}{{}}"), values, checked, missing);
        }
    }
    let (mut checked, mut missing) = (Vec::new(), Vec::new());
    for crd in cyclr_operator::resources::all_crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            walk(&kind, &version["schema"]["openAPIV3Schema"], &mut checked, &mut missing);
        }
    }
    for nested in [
        "CyclrAccount.spec.pricePlan.id",
        "CyclrAccount.status.conditions[].reason",
        "CyclrConnectorInstall.spec.auth.basicAuthSecretRef.passwordKey",
        "CyclrPartner.spec.namespaceSelector.matchExpressions[].values",
    ] {
        assert!(
            checked.iter().any(|p| p == nested),
            "the walk missed {nested}: {checked:#?}"
        );
    }
    assert!(missing.is_empty(), "properties without a description: {missing:#?}");
}
