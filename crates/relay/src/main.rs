// The global allocator is the binary's, chosen at build time with a cargo
// feature: jemalloc by default, because with its background thread a node
// gives the memory of a connection spike back to the system within seconds,
// where glibc's malloc keeps it for good (docs/benchmarks-notes.md, issue
// #19). Its decay settings are in .cargo/config.toml.
#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!(
    "the features `jemalloc` (a default) and `mimalloc` each pick the allocator: \
     build with `--no-default-features --features mimalloc`"
);

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay::cli::main()
}
