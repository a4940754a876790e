//! The OCI archive `make image` writes (hack/image.sh): its config (entrypoint, non-root
//! user), its files, and the binary in it answering `--version` with this crate's version.
//! The Dockerfile must describe the same image.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A blob of the OCI layout by its `sha256:…` digest.
fn blob(layout: &Path, digest: &Value) -> PathBuf {
    let digest = digest.as_str().expect("a digest");
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("a sha256 digest"))
}

fn json_blob(layout: &Path, digest: &Value) -> Value {
    serde_json::from_slice(&std::fs::read(blob(layout, digest)).expect("blob")).expect("JSON blob")
}

#[test]
fn image_archive_runs_the_operator_as_non_root() {
    let archive = Path::new(ROOT).join(format!("target/image/cyclr-operator-{VERSION}.oci.tar"));
    assert!(archive.exists(), "{} is missing: run `make image`", archive.display());
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));

    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image in the archive");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    let manifest = json_blob(&layout, &manifests[0]["digest"]);
    let config = json_blob(&layout, &manifest["config"]["digest"]);
    assert_eq!(
        (&config["os"], &config["architecture"]),
        (&"linux".into(), &"amd64".into())
    );
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/cyclr-operator"]));
    assert_eq!(c["Cmd"], serde_json::json!(["run"]));
    assert_eq!(c["User"], "65532:65532", "the image runs as a non-root user");
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], VERSION);

    // The layers, unpacked in order, are the whole root filesystem.
    let rootfs = scratch.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().expect("layers") {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(blob(&layout, &layer["digest"]))
            .arg("-C")
            .arg(&rootfs));
    }
    let mut files: Vec<String> = walk(&rootfs)
        .into_iter()
        .map(|p| p.strip_prefix(&rootfs).unwrap().display().to_string())
        .collect();
    files.sort();
    assert_eq!(files, ["cyclr-operator", "etc/ssl/certs/ca-certificates.crt"]);
    let version = run(Command::new(rootfs.join("cyclr-operator")).arg("--version"));
    assert_eq!(version.trim(), format!("cyclr-operator {VERSION}"));

    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    for line in [
        "FROM scratch",
        "USER 65532:65532",
        "ENTRYPOINT [\"/cyclr-operator\"]",
        "CMD [\"run\"]",
        "COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(dockerfile.lines().any(|l| l == line), "the Dockerfile lacks {line:?}");
    }
}

/// Regular files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
