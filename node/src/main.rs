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
    // glibc gives each thread that contends on malloc its own arena (up to
    // 8 per core), which an idle agent on a busy box pays for in RSS; two
    // arenas serve the runtime's threads. Set before any thread starts.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; called before threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    std::process::exit(skein_node::cli::main());
}
