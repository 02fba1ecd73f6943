//! Validating JSON documents against the shipped schemas (`docs/schemas/`) with an independent
//! validator: python3-jsonschema, Draft 2020-12.

use std::process::Command;

/// Validates `doc` against `docs/schemas/<schema>`; panics with the validator's message.
pub fn validate(schema: &str, doc: &[u8]) {
    let path = crate::repo_root().join("docs/schemas").join(schema);
    let dir = crate::TempDir::new("schema");
    let doc_path = dir.0.join("doc.json");
    std::fs::write(&doc_path, doc).expect("write document");
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1]));d=json.load(open(sys.argv[2]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        errs=sorted(jsonschema.Draft202012Validator(s).iter_errors(d),key=lambda e:list(e.path))\n\
        [print(list(e.path),e.message) for e in errs]\n\
        sys.exit(1 if errs else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg(&doc_path)
        .output()
        .expect("python3 runs (apt-get install python3-jsonschema)");
    assert!(
        out.status.success(),
        "{schema}: {}{}\ndocument: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(doc)
    );
}
