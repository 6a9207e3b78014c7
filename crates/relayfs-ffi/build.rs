//! Gives the shared library its versioned soname, `librelayfs.so.0` (the
//! major version of the C ABI), whatever cargo names the file. cargo-c
//! (`cargo cbuild`, `cargo cinstall`) sets the soname itself.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" && std::env::var_os("CARGO_CFG_CARGO_C").is_none() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librelayfs.so.0");
    }
}
