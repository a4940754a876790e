//! What the kstatus library (sigs.k8s.io/cli-utils, used by Flux) computes for an object:
//! `bin/kstatus`, built by `make testbin` from `hack/kstatus/main.go`.

use std::io::Write;
use std::process::{Command, Stdio};

/// The kstatus status (`Current`, `InProgress`, `Failed`, ...) and message for one object
/// (a full object as JSON, with `apiVersion`, `kind`, `metadata` and `status`). The binary
/// is looked up where the control plane's are (`bin/`, or `$CYCLR_TESTBIN`). Panics, saying
/// to run `make testbin`, when it is missing.
pub fn kstatus(obj: &serde_json::Value) -> (String, String) {
    let path = cyclr_testenv::control_plane::testbin_dir().join("kstatus");
    let path = path.display();
    let mut child = Command::new(path.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {path} ({e}): run `make testbin` to build it"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(obj.to_string().as_bytes())
        .expect("write to kstatus");
    let out = child.wait_with_output().expect("kstatus runs");
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kstatus prints one JSON object");
    let field = |name: &str| line[name].as_str().unwrap_or_default().to_string();
    (field("status"), field("message"))
}
