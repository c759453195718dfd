// Build dist/index.js from src/index.ts with Node's own type stripping (Node >= 23.2; no tsc needed).
// Run as `node --no-warnings build.mjs`; `--check` exits 1 when dist/ is stale (the tests run it).
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { stripTypeScriptTypes } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, "src", "index.ts"), "utf8");
const header = "// Generated from src/index.ts by build.mjs (node:module stripTypeScriptTypes). Do not edit.\n";
const stripped = stripTypeScriptTypes(source, { mode: "strip" })
  .split("\n").map((line) => line.trimEnd()).join("\n")
  .replace(/\n{3,}/g, "\n\n");
const output = header + stripped;
const target = join(here, "dist", "index.js");
if (process.argv.includes("--check")) {
  let current = "";
  try { current = readFileSync(target, "utf8"); } catch {}
  if (current !== output) {
    console.error("dist/index.js is stale: run `node deploy/openclaw/hearth-plugin/build.mjs`");
    process.exit(1);
  }
} else {
  mkdirSync(dirname(target), { recursive: true });
  writeFileSync(target, output);
}
