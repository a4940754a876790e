//! The parts of `cyclr-bench` that its programs share: the Kubernetes side of a scenario
//! (`cluster`), the operator as a child process (`operator`) and `make chaos` (`chaos`, used
//! by the `cyclr-chaos` binary and by the operator's `tests/chaos.rs`).

pub mod chaos;
pub mod cluster;
pub mod operator;

/// CPU model, cores, memory and load, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {cores} cores (nproc), {mem_gib:.1} GiB, load average {} at start",
        load.join(" ")
    )
}
