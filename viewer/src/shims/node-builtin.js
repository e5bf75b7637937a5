// What Node built-ins resolve to in the browser bundle. Emscripten's glue and xmlbuilder2's URL code
// (pulled in by vtk.js, unused by the viewer) require them on paths a browser never takes.
export function domainToASCII(domain) { return new URL(`http://${domain}`).hostname; }
export function domainToUnicode(domain) { return domain; }
export default {};
