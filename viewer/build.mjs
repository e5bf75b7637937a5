// Builds the viewer into backoffice/static/vendor/viewer/ (run by `make viewer-bundle`, never at test time).
//
//   viewer.js                   the page's code: Cornerstone3D core + tools + DICOM image loader (ES module)
//   decodeImageFrameWorker.js   the loader's decoding web worker (ES module, next to viewer.js: the loader
//                               starts it with new URL('./decodeImageFrameWorker.js', import.meta.url))
//   *.wasm                      the codecs the worker loads, from our origin (no CDN)
//   MANIFEST.json               SHA-256 of every file above and of package-lock.json
//
// Codecs: uncompressed (little/big endian, deflated, encapsulated), RLE and JPEG lossless (JavaScript),
// JPEG baseline 8-bit (libjpeg-turbo WASM), JPEG baseline 12-bit (JavaScript), JPEG-LS (CharLS WASM),
// JPEG 2000 (OpenJPEG WASM). Left out: JPEG XL and HTJ2K (1.1 MB and 0.3 MB of WASM for syntaxes
// the practice's modalities never send); a frame in those syntaxes shows an error in its pane.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, "../backoffice/static/vendor/viewer");
const loader = join(here, "node_modules/@cornerstonejs/dicom-image-loader/dist/esm");

const WASM = {  // the package export the loader resolves -> the file served next to the worker
  "@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm": "node_modules/@cornerstonejs/codec-libjpeg-turbo-8bit/dist/libjpegturbowasm_decode.wasm",
  "@cornerstonejs/codec-charls/decodewasm": "node_modules/@cornerstonejs/codec-charls/dist/charlswasm_decode.wasm",
  "@cornerstonejs/codec-openjpeg/decodewasm": "node_modules/@cornerstonejs/codec-openjpeg/dist/openjpegwasm_decode.wasm",
};
const LEFT_OUT = ["decodeJPEGXL.js", "decodeHTJ2K.js"];

const codecs = {
  name: "archivage-codecs",
  setup(build) {
    build.onResolve({ filter: /^events$/ }, () => ({ path: join(here, "src/shims/events.js") }));
    build.onResolve({ filter: /^(fs|path|crypto|module|url|worker_threads)$/ },
      () => ({ path: join(here, "src/shims/node-builtin.js") }));
    // The decoders we leave out: a stub that says so instead of 1.4 MB of WASM.
    build.onLoad({ filter: /shared[\\/]decoders[\\/]decode(JPEGXL|HTJ2K)\.js$/ }, (args) => ({
      contents: `const name = ${JSON.stringify(args.path.split(/[\\/]/).pop())};
        async function decode() { throw new Error(name + ": this transfer syntax is not in the Archivage viewer"); }
        export function initialize() { return Promise.resolve(); }
        export default decode;`,
      loader: "js",
    }));
    // The WASM of the decoders we keep: a file next to the worker (served from /static, our origin).
    build.onLoad({ filter: /shared[\\/]decoders[\\/]decode[A-Za-z0-9]+\.js$/ }, (args) => {
      let text = readFileSync(args.path, "utf8");
      for (const [spec, file] of Object.entries(WASM)) {
        text = text.replaceAll(`'${spec}'`, JSON.stringify("./" + file.split("/").pop()));
      }
      return { contents: text, loader: "js", resolveDir: dirname(args.path) };
    });
  },
};

const common = {
  bundle: true, format: "esm", platform: "browser", target: ["chrome100", "firefox100", "safari15"],
  minify: true, legalComments: "linked", logLevel: "warning", plugins: [codecs],
  define: { "process.env.NODE_ENV": '"production"' },
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await esbuild.build({ ...common, entryPoints: { viewer: join(here, "src/viewer.js") }, outdir: out });
await esbuild.build({ ...common, entryPoints: { decodeImageFrameWorker: join(loader, "decodeImageFrameWorker.js") },
  outdir: out });
for (const file of Object.values(WASM)) copyFileSync(join(here, file), join(out, file.split("/").pop()));

const sha256 = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");
const files = {};
for (const name of readdirSync(out).sort()) files[name] = sha256(join(out, name));
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const pkg = (name) => lock.packages[`node_modules/${name}`].version;
const manifest = {
  built_by: "make viewer-bundle (viewer/build.mjs)",
  package_lock_sha256: sha256(join(here, "package-lock.json")),
  package_json_sha256: sha256(join(here, "package.json")),
  // The viewer's own code and this script: a change there without a rebuild fails tests/unit/test_viewer_bundle.py.
  sources_sha256: Object.fromEntries(["build.mjs", ...readdirSync(join(here, "src"), { recursive: true })
    .filter((n) => n.endsWith(".js")).sort().map((n) => `src/${n}`)].map((n) => [n, sha256(join(here, n))])),
  versions: Object.fromEntries(["@cornerstonejs/core", "@cornerstonejs/tools", "@cornerstonejs/dicom-image-loader",
    "esbuild"].map((n) => [n, pkg(n)])),
  codecs_included: ["uncompressed (little/big endian, deflated, encapsulated)", "RLE lossless", "JPEG lossless",
    "JPEG baseline 8-bit (libjpeg-turbo WASM)", "JPEG baseline/extended 12-bit (JavaScript)",
    "JPEG-LS (CharLS WASM)", "JPEG 2000 (OpenJPEG WASM)"],
  codecs_left_out: LEFT_OUT.map((n) => n.replace(/^decode|\.js$/g, "")),
  files,
};
writeFileSync(join(out, "MANIFEST.json"), JSON.stringify(manifest, null, 2) + "\n");
for (const [name, digest] of Object.entries(files)) {
  console.log(`${digest.slice(0, 12)}  ${(readFileSync(join(out, name)).length / 1024).toFixed(0).padStart(6)} KB  ${name}`);
}
