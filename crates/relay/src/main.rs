// The global allocator is the binary's choice, made at build time with a
// cargo feature (measured in docs/benchmarks-notes.md, "Issue #19").
#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!("the features `jemalloc` and `mimalloc` each pick the allocator: enable one");

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay::cli::main()
}
