//! `control-plane up|down --dir DIR`: a detached etcd + kube-apiserver for humans and the
//! demo (`make cluster-up` / `make cluster-down`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cyclr_testenv::Lifetime;
use cyclr_testenv::control_plane;

#[derive(Parser)]
#[command(about = "Starts or stops a local etcd + kube-apiserver built by `make testbin`")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start in the background; returns once /readyz answers. Writes DIR/kubeconfig.
    Up {
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
    /// Stop what `up` started in DIR; fine if nothing runs.
    Down {
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Up { dir } => {
            let kubeconfig = control_plane::kubeconfig_in(&dir);
            if control_plane::is_running(&dir) {
                println!("control plane already running: KUBECONFIG={}", kubeconfig.display());
                return Ok(());
            }
            // Leftovers of a half-dead control plane would hold the data dir.
            control_plane::stop(&dir)?;
            let started = Instant::now();
            control_plane::start(&dir, Lifetime::Detached).await?;
            println!(
                "control plane ready in {:.1}s (logs in {}): export KUBECONFIG={}",
                started.elapsed().as_secs_f64(),
                dir.display(),
                kubeconfig.display()
            );
        }
        Cmd::Down { dir } => {
            control_plane::stop(&dir)?;
            println!("control plane in {} stopped", dir.display());
        }
    }
    Ok(())
}
