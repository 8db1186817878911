fn main() {
    // `skein shim ...`: the process runtime's per-task supervisor (hidden;
    // started by the agent, see runtime/shim.rs). Dispatched before anything
    // else so the shim stays a plain single-threaded process.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        std::process::exit(skein_node::runtime::shim::run_shim(&args[2..]));
    }
    // `skein fleet-sim ...`: the fleet simulator of `scripts/bench.sh fleet`
    // (hidden; see fleet_sim.rs).
    if args.get(1).map(String::as_str) == Some("fleet-sim") {
        std::process::exit(skein_node::fleet_sim::main(&args[2..]));
    }
    std::process::exit(skein_node::cli::main());
}
