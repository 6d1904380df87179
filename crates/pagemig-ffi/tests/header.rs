//! `include/pagemig.h` is what cbindgen makes of the library today.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads src/lib.rs")
        .write(&mut made);
    let made = String::from_utf8(made).expect("UTF-8 header");
    let path = dir.join("include/pagemig.h");
    if std::env::var_os("PAGEMIG_BLESS").is_some() {
        std::fs::write(&path, &made).expect("write the header");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == made,
        "{} is out of date: run PAGEMIG_BLESS=1 cargo test -p pagemig-ffi --test header",
        path.display()
    );
}
