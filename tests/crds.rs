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

#[test]
fn crds_carry_names_columns_and_validation() {
    let yaml = cyclr_operator::resources::crds_yaml();
    for expected in [
        "shortNames:\n    - cyp",
        "shortNames:\n    - cya",
        "shortNames:\n    - cyci",
        "- cyclr",
        "name: Account-ID",
        "x-kubernetes-validations",
        "subresources:\n      status: {}",
    ] {
        assert!(yaml.contains(expected), "CRDs lack {expected:?}");
    }
}
