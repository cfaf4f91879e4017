// Validate .glb files with the Khronos glTF-Validator (npm package gltf-validator) and print one JSON
// line per file: {"file", "errors", "warnings", "messages": [[code, severity, pointer, message], ...]}.
// Used by tests/test_mesh.py; the module is installed by `make setup` into .tools/node_modules.
const validator = require("gltf-validator");
const fs = require("fs");

async function main(files) {
  for (const file of files) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)));
    const messages = report.issues.messages.map((m) => [m.code, m.severity, m.pointer || "", m.message]);
    console.log(JSON.stringify({ file, errors: report.issues.numErrors, warnings: report.issues.numWarnings, messages }));
  }
}

main(process.argv.slice(2)).catch((err) => {
  console.error(String(err));
  process.exit(1);
});
