//! docs/api.md, the API reference, written from the CRDs themselves so it cannot drift from
//! what the API server validates (`cyclr-operator crd --reference`, run by `make manifests`).

use std::fmt::Write as _;

use serde_json::Value;

use super::all_crds;

/// The API reference of every kind, as Markdown.
pub fn api_reference() -> String {
    let mut out = String::from(
        "# API reference\n\n\
         Generated from the CRDs by `make manifests` (`cyclr-operator crd --reference`);\n\
         `tests/crds.rs` fails when it differs from them. What the API version promises:\n\
         [versioning.md](versioning.md). Behaviour, conditions and reasons:\n\
         [operator.md](operator.md).\n",
    );
    for crd in all_crds() {
        let crd = serde_json::to_value(&crd).expect("a CRD always serialises");
        let spec = &crd["spec"];
        let names = &spec["names"];
        for version in spec["versions"].as_array().into_iter().flatten() {
            let schema = &version["schema"]["openAPIV3Schema"];
            let _ = write!(
                out,
                "\n## {kind}\n\n{description}\n\n\
                 | | |\n|---|---|\n\
                 | API version | `{group}/{version}` |\n\
                 | scope | {scope} |\n\
                 | names | `{plural}`, `{singular}`{short} |\n\
                 | categories | {categories} |\n\
                 | `kubectl get` columns | {columns} |\n\n\
                 | field | type | description | validation |\n|---|---|---|---|\n",
                kind = text(&names["kind"]),
                description = one_line(&text(&schema["description"])),
                group = text(&spec["group"]),
                version = text(&version["name"]),
                scope = text(&spec["scope"]),
                plural = text(&names["plural"]),
                singular = text(&names["singular"]),
                short = strings(&names["shortNames"])
                    .iter()
                    .map(|s| format!(", `{s}`"))
                    .collect::<String>(),
                categories = code_list(&strings(&names["categories"])),
                columns = version["additionalPrinterColumns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| text(&c["name"]))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            for top in ["spec", "status"] {
                fields(&mut out, top, &schema["properties"][top], required(schema, top));
            }
        }
    }
    out
}

/// One table row per property, depth first, in the schema's (alphabetical) order.
fn fields(out: &mut String, path: &str, schema: &Value, is_required: bool) {
    if schema.is_null() {
        return;
    }
    let _ = writeln!(
        out,
        "| `{path}` | {} | {} | {} |",
        type_name(schema),
        cell(&text(&schema["description"])),
        cell(&validation(schema, is_required)),
    );
    // Arrays and maps of objects: their fields under `path[]` and `path{}`.
    let (inner, inner_path) = if let Some(items) = schema.get("items") {
        (items, format!("{path}[]"))
    } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        (values, format!("{path}{{}}"))
    } else {
        (schema, path.to_string())
    };
    for (name, property) in inner["properties"].as_object().into_iter().flatten() {
        fields(out, &format!("{inner_path}.{name}"), property, required(inner, name));
    }
}

fn type_name(schema: &Value) -> String {
    if let Some(items) = schema.get("items") {
        return format!("[]{}", type_name(items));
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        return format!("map[string]{}", type_name(values));
    }
    let mut name = text(&schema["type"]);
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(name, " ({format})");
    }
    name
}

/// What the API server checks: required, default, enum, limits, pattern and CEL messages.
fn validation(schema: &Value, is_required: bool) -> String {
    let mut parts = Vec::new();
    if is_required {
        parts.push("required".to_string());
    }
    if let Some(default) = schema.get("default") {
        parts.push(format!("default `{}`", compact(default)));
    }
    if let Some(values) = schema["enum"].as_array() {
        parts.push(format!(
            "one of {}",
            code_list(&values.iter().map(compact).collect::<Vec<_>>())
        ));
    }
    for (key, what) in [
        ("minimum", "at least"),
        ("maximum", "at most"),
        ("maxLength", "at most"),
    ] {
        if let Some(n) = schema[key].as_f64() {
            let unit = if key == "maxLength" { " characters" } else { "" };
            // The schema's numbers are floats (`10000.0`); the limits are whole numbers.
            parts.push(format!("{what} {n}{unit}"));
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        parts.push(format!("matches `{pattern}`"));
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        parts.push(text(&rule["message"]));
    }
    parts.join("; ")
}

fn required(schema: &Value, name: &str) -> bool {
    schema["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|n| n == name))
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().map(text).collect()
}

/// A JSON value as written in a manifest: strings bare, the rest as JSON.
fn compact(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn code_list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: one line, and a `|` that does not end the cell.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_nested_field_has_a_row() {
        let reference = api_reference();
        for expected in [
            "## CyclrPartner\n",
            "## CyclrAccount\n",
            "## CyclrConnectorInstall\n",
            "| `spec.credentialsSecretRef.clientIDKey` | string | The data key holding the OAuth client id; default `client_id`. | default `client_id`; at most 253 characters; ",
            "| `status.conditions[].reason` | string |",
            "| `spec.namespaceSelector.matchLabels` | map[string]string |",
            "| scope | Cluster |",
            "| scope | Namespaced |",
        ] {
            assert!(reference.contains(expected), "no {expected:?} in\n{reference}");
        }
        assert!(
            !reference.contains("Auto-generated"),
            "a kind without its own description"
        );
    }
}
