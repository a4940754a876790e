//! `kubectl cyclr`: see [`cyclr_operator::plugin`]. kubectl finds this binary on `PATH`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    std::process::exit(cyclr_operator::plugin::main().await);
}
