//! What `make release` writes into dist/ (hack/release.sh), artifact by artifact: the image
//! index and its two images (architecture, entrypoint, user, every digest against its blob),
//! the chart package, the krew archives against the sha256 sums of the krew manifest, the
//! SBOM, and SHA256SUMS over all of them; and the release workflow that publishes them
//! (.github/workflows/release.yaml) calls only make targets that exist.
//!
//! `make test` builds dist/ with `RELEASE_PROFILE=dev` (debug binaries: the same artifacts,
//! minutes instead of the release profile's half hour per architecture); `make
//! release-dry-run` checks a real `make release` with these same tests.

#[path = "support/chart.rs"]
#[allow(dead_code)] // the chart tests' helpers; this one needs only the repository and `run`
mod chart;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chart::{ROOT, run};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// dist/, or a panic naming the command that writes it.
fn dist() -> PathBuf {
    let dist = Path::new(ROOT).join("dist");
    assert!(
        dist.join("SHA256SUMS").exists(),
        "{}/SHA256SUMS is missing: run `make release` (or `RELEASE_PROFILE=dev bash hack/release.sh`)",
        dist.display()
    );
    dist
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The chart's own version (Chart.yaml), which names its package.
fn chart_version() -> String {
    let text = std::fs::read_to_string(Path::new(ROOT).join("charts/cyclr-operator/Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&text).unwrap();
    chart["version"].as_str().expect("Chart.yaml version").to_string()
}

/// The files `tar` lists in `archive`, sorted, directories left out.
fn tar_files(archive: &Path) -> Vec<String> {
    let mut files: Vec<String> = run(Command::new("tar").arg("-tf").arg(archive))
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("./").to_string())
        .collect();
    files.sort();
    files
}

/// The ELF machine of a binary, as the OCI architecture it runs on.
fn elf_architecture(binary: &Path) -> &'static str {
    let bytes = std::fs::read(binary).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF binary", binary.display());
    // e_machine, little-endian, at offset 18 (System V ABI; 62 = x86-64, 183 = AArch64).
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => "amd64",
        183 => "arm64",
        other => panic!("{}: unexpected ELF machine {other}", binary.display()),
    }
}

/// A static binary has no program interpreter (no `PT_INTERP` header, type 3).
fn is_static(binary: &Path) -> bool {
    let bytes = std::fs::read(binary).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|i| u32::from_le_bytes(bytes[phoff + i * size..][..4].try_into().unwrap()) != 3)
}

#[test]
fn sha256sums_lists_every_artifact_and_verifies() {
    let dist = dist();
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let mut listed = BTreeSet::new();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").expect("`sha256sum` lines: SUM  NAME");
        let bytes = std::fs::read(dist.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(sha256_hex(&bytes), sum, "SHA256SUMS: {name} differs");
        listed.insert(name.to_string());
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    assert_eq!(listed, present, "SHA256SUMS covers exactly the files of dist/");
    let expected: BTreeSet<String> = [
        format!("cyclr-operator-{VERSION}.oci.tar"),
        format!("cyclr-operator-{}.tgz", chart_version()),
        format!("kubectl-cyclr-v{VERSION}-x86_64-unknown-linux-musl.tar.gz"),
        format!("kubectl-cyclr-v{VERSION}-aarch64-unknown-linux-musl.tar.gz"),
        "krew-cyclr.yaml".to_string(),
        format!("cyclr-operator-{VERSION}.cdx.json"),
    ]
    .into();
    assert_eq!(present, expected);
    // And the way users check it.
    run(Command::new("sha256sum")
        .arg("--check")
        .arg("--strict")
        .arg("SHA256SUMS")
        .current_dir(&dist));
}

/// An OCI layout unpacked from the release's archive; every blob read through it is checked
/// against its descriptor (digest and size).
struct Layout(PathBuf);

impl Layout {
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().expect("a digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let bytes =
            std::fs::read(self.0.join("blobs/sha256").join(hex)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        assert_eq!(sha256_hex(&bytes), hex, "the blob named {digest} has another digest");
        assert_eq!(descriptor["size"], json!(bytes.len()), "the size of {digest}");
        bytes
    }

    fn json(&self, descriptor: &Value) -> Value {
        serde_json::from_slice(&self.blob(descriptor)).expect("a JSON blob")
    }
}

#[test]
fn image_index_holds_an_amd64_and_an_arm64_image_run_as_non_root() {
    let archive = dist().join(format!("cyclr-operator-{VERSION}.oci.tar"));
    let scratch = tempfile::tempdir().unwrap();
    let layout = Layout(scratch.path().join("layout"));
    std::fs::create_dir(&layout.0).unwrap();
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout.0));

    let top: Value = serde_json::from_slice(&std::fs::read(layout.0.join("index.json")).unwrap()).unwrap();
    let tags = top["manifests"].as_array().expect("manifests");
    assert_eq!(tags.len(), 1, "the layout names one thing: the index");
    assert_eq!(tags[0]["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(tags[0]["annotations"]["org.opencontainers.image.ref.name"], VERSION);
    let index = layout.json(&tags[0]);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index["schemaVersion"], 2);

    let mut architectures = Vec::new();
    for entry in index["manifests"].as_array().expect("the index's manifests") {
        assert_eq!(entry["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let arch = entry["platform"]["architecture"]
            .as_str()
            .expect("a platform")
            .to_string();
        assert_eq!(entry["platform"]["os"], "linux");
        let manifest = layout.json(entry);
        let config = layout.json(&manifest["config"]);
        assert_eq!(
            (&config["os"], &config["architecture"]),
            (&json!("linux"), &json!(arch))
        );
        let c = &config["config"];
        assert_eq!(c["Entrypoint"], json!(["/cyclr-operator"]), "{arch}");
        assert_eq!(c["Cmd"], json!(["run"]), "{arch}");
        assert_eq!(c["User"], "65532:65532", "{arch}: the image runs as a non-root user");
        assert_eq!(c["Labels"]["org.opencontainers.image.version"], VERSION, "{arch}");

        let rootfs = scratch.path().join(format!("rootfs-{arch}"));
        std::fs::create_dir(&rootfs).unwrap();
        let layers = manifest["layers"].as_array().expect("layers");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
        assert_eq!(layers.len(), diff_ids.len(), "{arch}: one diff_id per layer");
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let path = scratch.path().join("layer.tar.gz");
            std::fs::write(&path, layout.blob(layer)).unwrap();
            // The diff_id is the digest of the uncompressed layer.
            let tar = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
            assert!(tar.status.success());
            assert_eq!(
                diff_id.as_str().unwrap(),
                format!("sha256:{}", sha256_hex(&tar.stdout)),
                "{arch}: a layer's diff_id"
            );
            run(Command::new("tar").arg("-xzf").arg(&path).arg("-C").arg(&rootfs));
        }
        let binary = rootfs.join("cyclr-operator");
        assert_eq!(elf_architecture(&binary), arch, "the {arch} image's binary");
        assert!(
            is_static(&binary),
            "{arch}: the binary is static (the image is FROM scratch)"
        );
        assert!(
            rootfs.join("etc/ssl/certs/ca-certificates.crt").exists(),
            "{arch}: the CA bundle"
        );
        if arch == "amd64" {
            let version = run(Command::new(&binary).arg("--version"));
            assert_eq!(version.trim(), format!("cyclr-operator {VERSION}"));
        }
        architectures.push(arch);
    }
    architectures.sort();
    assert_eq!(architectures, ["amd64", "arm64"]);
}

#[test]
fn krew_manifest_names_each_archive_by_its_sha256() {
    let dist = dist();
    let manifest: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dist.join("krew-cyclr.yaml")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["spec"]["version"], format!("v{VERSION}"));
    let mut architectures = Vec::new();
    for platform in manifest["spec"]["platforms"].as_array().expect("platforms") {
        let labels = &platform["selector"]["matchLabels"];
        assert_eq!(labels["os"], "linux");
        let arch = labels["arch"].as_str().unwrap();
        let uri = platform["uri"].as_str().unwrap();
        assert!(!uri.contains("RELEASE_URL"), "{uri}: the release URL was filled in");
        let name = uri.rsplit('/').next().unwrap();
        let archive = dist.join(name);
        let bytes = std::fs::read(&archive).unwrap_or_else(|e| panic!("{name}, named by the krew manifest: {e}"));
        assert_eq!(
            platform["sha256"],
            sha256_hex(&bytes),
            "{name}: the krew manifest's sha256"
        );
        assert_eq!(tar_files(&archive), ["LICENSE", "kubectl-cyclr"], "{name}");
        let scratch = tempfile::tempdir().unwrap();
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(scratch.path()));
        let binary = scratch.path().join("kubectl-cyclr");
        assert_eq!(elf_architecture(&binary), arch, "{name}");
        assert!(is_static(&binary), "{name}: kubectl-cyclr is static");
        if arch == "amd64" {
            let version = run(Command::new(&binary).arg("--version"));
            assert!(version.contains(VERSION), "{version}");
        }
        architectures.push(arch.to_string());
    }
    architectures.sort();
    assert_eq!(architectures, ["amd64", "arm64"]);
}

#[test]
fn sbom_is_cyclonedx_and_names_the_crates_in_the_binaries() {
    let text = std::fs::read_to_string(dist().join(format!("cyclr-operator-{VERSION}.cdx.json"))).unwrap();
    let sbom: Value = serde_json::from_str(&text).expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert!(sbom["serialNumber"].as_str().unwrap().starts_with("urn:uuid:"));
    let root = &sbom["metadata"]["component"];
    assert_eq!(
        (&root["name"], &root["version"]),
        (&json!("cyclr-operator"), &json!(VERSION))
    );
    assert_eq!(root["licenses"], json!([{"expression": "Apache-2.0"}]));
    let components: BTreeMap<&str, &Value> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    for name in [
        "cyclr-client",
        "cyclr-driver",
        "kube",
        "rustls",
        "ring",
        "tokio",
        "serde",
    ] {
        let c = components.get(name).unwrap_or_else(|| panic!("the SBOM lacks {name}"));
        let version = c["version"].as_str().unwrap();
        assert_eq!(c["purl"], format!("pkg:cargo/{name}@{version}"));
    }
    // Only what the binaries are built from: no test-only crate.
    for name in ["cyclr-sim", "cyclr-testenv", "cyclr-bench", "tempfile"] {
        assert!(
            !components.contains_key(name),
            "the SBOM names {name}, which no binary holds"
        );
    }
    let refs: BTreeSet<&str> = sbom["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["ref"].as_str().unwrap())
        .collect();
    let count = sbom["components"].as_array().unwrap().len();
    assert_eq!(
        refs.len(),
        count + 1,
        "one dependency entry per crate (and the operator's)"
    );
}

#[test]
fn chart_package_is_the_chart_of_this_version() {
    let package = dist().join(format!("cyclr-operator-{}.tgz", chart_version()));
    let files = tar_files(&package);
    for file in [
        "cyclr-operator/Chart.yaml",
        "cyclr-operator/values.yaml",
        "cyclr-operator/values.schema.json",
        "cyclr-operator/files/crds.yaml",
    ] {
        assert!(files.iter().any(|f| f == file), "{} lacks {file}", package.display());
    }
    let chart = run(Command::new("tar")
        .arg("-xzOf")
        .arg(&package)
        .arg("cyclr-operator/Chart.yaml"));
    let chart: Value = serde_yaml::from_str(&chart).unwrap();
    assert_eq!(
        chart["appVersion"], VERSION,
        "the packaged chart deploys this release's image"
    );
    assert_eq!(chart["version"], chart_version());
}

/// The targets the Makefile defines (lines `name:` or `name: prerequisites`), each with its
/// prerequisites.
fn make_targets() -> BTreeMap<String, Vec<String>> {
    let makefile = std::fs::read_to_string(Path::new(ROOT).join("Makefile")).unwrap();
    makefile
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', '.', ' ']))
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, rest)| !rest.starts_with('=') && !name.contains(['$', ' ', '?']))
        .map(|(name, rest)| (name.to_string(), rest.split_whitespace().map(String::from).collect()))
        .collect()
}

/// Whether `make target` runs `wanted`: it is the target or one of its prerequisites, at any depth.
fn runs(targets: &BTreeMap<String, Vec<String>>, target: &str, wanted: &str) -> bool {
    target == wanted
        || targets
            .get(target)
            .is_some_and(|pre| pre.iter().any(|p| runs(targets, p, wanted)))
}

#[test]
fn release_workflow_builds_with_make_release_and_publishes_signed() {
    let path = Path::new(ROOT).join(".github/workflows/release.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let workflow: Value = serde_yaml::from_str(&text).expect("the workflow is YAML");
    let tags = &workflow["on"]["push"]["tags"];
    assert_eq!(tags, &json!(["v*"]), "a release is a pushed tag v<version>");
    assert_eq!(
        workflow["permissions"]["id-token"], "write",
        "cosign keyless signing needs the forge's OIDC token"
    );
    let targets = make_targets();
    // The forge's expressions, `${{ … }}`, become a word for the shell's parser.
    let expression = regex::Regex::new(r"\$\{\{[^}]*\}\}").unwrap();
    let mut called = Vec::new();
    let mut scripts = String::new();
    for (job_name, job) in workflow["jobs"].as_object().expect("jobs") {
        for step in job["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("job {job_name}: steps"))
        {
            let Some(script) = step["run"].as_str() else { continue };
            let script = expression.replace_all(script, "X");
            let check = Command::new("bash")
                .arg("-n")
                .arg("-c")
                .arg(script.as_ref())
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "job {job_name}, step {}: not valid bash: {}",
                step["name"],
                String::from_utf8_lossy(&check.stderr)
            );
            for words in script.split(['\n', ';', '&', '|']) {
                let mut words = words.split_whitespace();
                if words.next() == Some("make") {
                    called.extend(
                        words
                            .take_while(|w| !w.starts_with('-') && !w.contains('='))
                            .map(str::to_string),
                    );
                }
            }
            scripts.push_str(&script);
            scripts.push('\n');
        }
    }
    for target in &called {
        assert!(
            targets.contains_key(target),
            "the workflow calls `make {target}`, which the Makefile lacks"
        );
    }
    assert!(
        called.iter().any(|t| runs(&targets, t, "release")),
        "the workflow runs `make release`: {called:?}"
    );
    assert!(
        called.iter().any(|t| runs(&targets, t, "release-dry-run")),
        "the workflow checks dist/ before it publishes (`make release-dry-run`): {called:?}"
    );
    for (what, needle) in [
        ("pushes the multi-arch index as one tag", "skopeo copy --all"),
        ("pushes the chart to an OCI registry", "helm push dist/cyclr-operator-"),
        ("signs keylessly", "cosign sign --yes"),
        ("publishes SHA256SUMS", "dist/SHA256SUMS"),
    ] {
        assert!(scripts.contains(needle), "the workflow {what}: no {needle:?}");
    }
}
