//! Checks admission cannot make: values CEL has no data for (the IANA time zone database).
//! The reconcile driver runs them before any Cyclr call and stalls with the field's name.

use super::CyclrAccountSpec;

/// A spec field whose value the operator cannot send to Cyclr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path from the object's root, e.g. `spec.timezone`.
    pub field: String,
    /// Why the value is refused and what to write instead.
    pub message: String,
}

/// Checks what the CRD schema cannot: `spec.timezone` must name a zone in the IANA time
/// zone database bundled with the operator (exactly as spelled there, e.g. `Europe/London`).
/// Everything else in the spec is checked at admission. Errors: the first invalid field.
pub fn validate_account_spec(spec: &CyclrAccountSpec) -> Result<(), FieldError> {
    if let Some(zone) = spec.timezone.as_deref() {
        validate_timezone(zone).map_err(|message| FieldError {
            field: "spec.timezone".into(),
            message,
        })?;
    }
    Ok(())
}

fn validate_timezone(zone: &str) -> Result<(), String> {
    // jiff finds names case-insensitively; Cyclr is given the database's own spelling.
    match jiff::tz::db().get(zone) {
        Ok(tz) if tz.iana_name() == Some(zone) => Ok(()),
        Ok(tz) => Err(format!(
            "{zone:?} is spelled {:?} in the IANA time zone database",
            tz.iana_name().unwrap_or_default()
        )),
        Err(_) => Err(format!(
            "{zone:?} is not an IANA time zone name (such as Europe/London or UTC)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timezone: Option<&str>) -> CyclrAccountSpec {
        serde_json::from_value(serde_json::json!({ "timezone": timezone })).unwrap()
    }

    #[test]
    fn real_zones_pass() {
        for zone in [
            "Europe/London",
            "America/New_York",
            "America/Argentina/Buenos_Aires",
            "UTC",
            "Etc/GMT+5",
        ] {
            assert_eq!(validate_account_spec(&spec(Some(zone))), Ok(()), "{zone}");
        }
        assert_eq!(
            validate_account_spec(&spec(None)),
            Ok(()),
            "no timezone: Cyclr's default"
        );
    }

    /// The admission pattern of `spec.timezone`, as the generated CRD carries it.
    fn admission_pattern() -> regex::Regex {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::resources::CyclrAccount::crd()).unwrap();
        let timezone =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["timezone"];
        assert_eq!(timezone["maxLength"], 64);
        regex::Regex::new(timezone["pattern"].as_str().expect("a pattern")).unwrap()
    }

    #[test]
    fn every_name_in_the_bundled_database_passes_admission_and_the_operator() {
        let pattern = admission_pattern();
        let names: Vec<String> = jiff::tz::db().available().map(|name| name.to_string()).collect();
        assert!(
            names.len() > 500,
            "the whole database is bundled: {} names",
            names.len()
        );
        for zone in &names {
            assert!(pattern.is_match(zone) && zone.len() <= 64, "admission refuses {zone}");
            assert_eq!(validate_account_spec(&spec(Some(zone))), Ok(()), "{zone}");
        }
        for zone in [
            "CET",
            "UTC",
            "Etc/GMT+5",
            "America/Argentina/Buenos_Aires",
            "EST5EDT",
            "GMT0",
        ] {
            assert!(names.iter().any(|name| name == zone), "{zone} is in the database");
        }
        // What is no name at all is still refused at admission.
        for junk in ["not a zone", "Europe/", "/UTC", "Europe//London", "+05:00", ""] {
            assert!(!pattern.is_match(junk), "admission accepts {junk:?}");
        }
    }

    #[test]
    fn names_shaped_like_zones_but_unknown_are_refused_naming_the_field() {
        for zone in ["Europe/Atlantis", "Mars/Olympus_Mons", "America/Springfield"] {
            let err = validate_account_spec(&spec(Some(zone))).unwrap_err();
            assert_eq!(err.field, "spec.timezone");
            assert!(err.message.contains("not an IANA time zone"), "{err}");
            assert!(err.to_string().starts_with("spec.timezone: "), "{err}");
        }
    }

    #[test]
    fn a_zone_in_the_wrong_case_is_refused_with_its_spelling() {
        let err = validate_account_spec(&spec(Some("Europe/LONDON"))).unwrap_err();
        assert!(err.message.contains("\"Europe/London\""), "{err}");
    }
}
