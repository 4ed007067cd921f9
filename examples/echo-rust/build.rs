// Cargo build script of echo_rust: the same link setting as the Makefile's
// rustc command. The host functions of dlhost.h stay undefined until the
// plugin is dlopen'ed by the dlhost addon, so never link with `-z defs`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,undefs");
    // "version" answers PLUGIN_VERSION as it was when the plugin was compiled.
    println!("cargo:rerun-if-env-changed=PLUGIN_VERSION");
}
