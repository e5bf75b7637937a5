// The Archivage study viewer, on Cornerstone3D, fed by the archive's own DICOMweb (/dicom-web).
//
// The page (templates/radiology/viewer.html) renders the toolbar and the panes; this module reads its
// configuration from <script id="viewer-config" type="application/json"> and brings the panes to life:
// stack scrolling (wheel, keys), zoom and pan, window/level by mouse and presets, current and prior side
// by side with linked scrolling, length/angle/ROI measurements, mammography hanging (R/L, CC/MLO),
// cine for multi-frame objects, and key-image marking (not on a share link: read-only).
//
// Built by `make viewer-bundle` into backoffice/static/vendor/viewer/viewer.js; never edited there.
import {
  Enums, RenderingEngine, cache, getRenderingEngine, init as coreInit, getShouldUseCPURendering,
  setUseCPURendering, utilities as coreUtils,
} from "@cornerstonejs/core";
import {
  AngleTool, EllipticalROITool, Enums as ToolEnums, LengthTool, PanTool, StackScrollTool, ToolGroupManager,
  WindowLevelTool, ZoomTool, addTool, init as toolsInit, utilities as toolUtils,
} from "@cornerstonejs/tools";
import dicomImageLoader from "@cornerstonejs/dicom-image-loader";

const cfg = JSON.parse(document.getElementById("viewer-config").textContent);
const { MouseBindings } = ToolEnums;
const ENGINE = "archivage";
const GROUP = "archivage-tools";
const TOOLS = { wl: WindowLevelTool, pan: PanTool, zoom: ZoomTool, length: LengthTool, angle: AngleTool,
  roi: EllipticalROITool };

// -- DICOM JSON ------------------------------------------------------------------------------------

const value = (item, tag) => item[tag]?.Value;
const first = (item, tag) => value(item, tag)?.[0];
const str = (item, tag) => {
  const v = first(item, tag);
  return v === undefined || v === null ? "" : (typeof v === "object" ? (v.Alphabetic ?? "") : String(v));
};
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];

function laterality(item) { return (str(item, "00200062") || str(item, "00200060")).toUpperCase(); }
function view(item) {
  const position = str(item, "00185101").toUpperCase();
  if (position) return position;
  const code = first(item, "00540220");  // ViewCodeSequence: SNOMED R-10242 cranio-caudal, R-10226 MLO
  const meaning = code ? `${str(code, "00080100")} ${str(code, "00080104")}`.toLowerCase() : "";
  if (/r-10242|399162004|cranio-caudal/.test(meaning)) return "CC";
  if (/r-10226|399368009|medio-lateral oblique/.test(meaning)) return "MLO";
  return "";
}

async function fetchMetadata(path) {
  const root = new URL(cfg.dicomweb, location.href).href.replace(/\/$/, "");
  const response = await fetch(`${root}${path}/metadata`,
    { credentials: "same-origin", headers: { Accept: "application/dicom+json" } });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return { root, instances: await response.json() };
}

/** The frames of *instances* (DICOM JSON), in instance-number order: {imageId, sop, frame (0-based), frames, meta}. */
function framesOf(root, study, series, instances) {
  instances = instances.filter((i) => value(i, "7FE00010") || value(i, "00280010") || i["7FE00010"]);
  instances.sort((a, b) => (Number(first(a, "00200013")) || 0) - (Number(first(b, "00200013")) || 0));
  const items = [];
  for (const meta of instances) {
    const sop = str(meta, "00080018");
    const frames = Math.max(1, Number(first(meta, "00280008")) || 1);
    for (let f = 1; f <= frames; f += 1) {
      const imageId = `wadors:${root}/studies/${study}/series/${series}/instances/${sop}/frames/${f}`;
      dicomImageLoader.wadors.metaDataManager.add(imageId, meta);
      items.push({ imageId, sop, frame: f - 1, frames, meta });
    }
  }
  return items;
}

/** The series' frames (one metadata request for the whole series). */
async function loadSeries(study, series) {
  const { root, instances } = await fetchMetadata(`/studies/${study}/series/${series}`);
  return framesOf(root, study, series, instances);
}

/** The frames of one instance: what the first image needs, long before a 500-image series' metadata. */
async function loadInstance(study, series, sop) {
  const { root, instances } = await fetchMetadata(`/studies/${study}/series/${series}/instances/${sop}`);
  return framesOf(root, study, series, instances);
}

/** Slice geometry of a stack when every image has a position and all are parallel; else null. */
function geometry(items) {
  let normal = null;
  const positions = [];
  for (const { meta, frames } of items) {
    const o = value(meta, "00200037"); const p = value(meta, "00200032");
    if (frames > 1 || !o || o.length !== 6 || !p || p.length !== 3) return null;
    const n = cross(o.slice(0, 3).map(Number), o.slice(3).map(Number));
    if (normal && Math.abs(dot(n, normal)) < 0.99) return null;
    normal = normal || n;
    positions.push(p.map(Number));
  }
  if (!normal) return null;
  return { normal, positions, frameOfReference: str(items[0].meta, "00200052") };
}

// -- panes -----------------------------------------------------------------------------------------

class Pane {
  constructor(el, viewer) {
    this.el = el; this.viewer = viewer; this.role = el.dataset.pane; this.study = el.dataset.study;
    this.items = []; this.index = 0; this.geometry = null;
    this.viewportId = `vp-${el.dataset.pane}`;
    this.stage = el.querySelector(".stage");
    this.series = el.querySelector("select.series");
    if (this.series) this.series.addEventListener("change", () => { this.dropPreview(); this.load(this.series.value); });
    el.addEventListener("pointerdown", () => viewer.activate(this));
    this.stage.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => this.onNewImage());
    this.stage.addEventListener(Enums.Events.VOI_MODIFIED, () => this.showInfo());
    // The page shows the first image as the server renders it while this code starts; it gives way
    // to the first image drawn here, to another series, or if the server could not render it.
    this.preview = this.stage.querySelector("img.preview");
    if (this.preview) {
      this.preview.addEventListener("error", () => this.dropPreview());
      if (this.preview.complete && !this.preview.naturalWidth) this.dropPreview();
    }
    this.stage.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
      this.dropPreview();
      this.el.dataset.rendered = String(Number(this.el.dataset.rendered || 0) + 1);
    });
    this.stage.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, (e) => this.fail(e.detail?.error));
    this.stage.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  dropPreview() { this.preview?.remove(); this.preview = null; }

  get viewport() { return getRenderingEngine(ENGINE).getViewport(this.viewportId); }
  get current() { return this.items[this.index]; }

  enable() {
    getRenderingEngine(ENGINE).enableElement({ viewportId: this.viewportId, element: this.stage,
      type: Enums.ViewportType.STACK, defaultOptions: { background: [0, 0, 0] } });
    ToolGroupManager.getToolGroup(GROUP).addViewport(this.viewportId, ENGINE);
  }

  /** Show the series: its first image as soon as that instance's metadata is in (the page names it),
   *  then the whole stack once the series' metadata is. */
  async load(seriesUid, items = null) {
    this.el.dataset.state = "loading";
    const loading = Symbol("load"); this.loading = loading;
    try {
      const firstSop = !items && this.series?.selectedOptions[0]?.dataset.first;
      if (firstSop) {
        const head = await loadInstance(this.study, seriesUid, firstSop).catch(() => null);
        if (head?.length && this.loading === loading) await this.show(head, 0, false);
      }
      // Asked for once the first image is in: on the server it would hold up the first image's requests.
      const all = items || await loadSeries(this.study, seriesUid);
      if (this.loading !== loading) return;
      if (!all.length) throw new Error(cfg.strings.noImage);
      const shown = this.items.length ? this.current.imageId : null;
      await this.show(all, Math.max(0, all.findIndex((i) => i.imageId === shown)), true);
    } catch (error) {
      if (this.loading === loading) this.fail(error);
    }
  }

  async show(items, index, complete) {
    this.items = items;
    this.geometry = complete ? geometry(items) : null;
    this.index = index;
    await this.viewport.setStack(items.map((i) => i.imageId), index);
    if (complete) {
      toolUtils.stackPrefetch.enable(this.stage);
      this.viewer.relink();
    }
    this.applyHanging();
    this.viewport.render();
    this.el.dataset.state = complete ? "ready" : "first";
    this.onNewImage();
  }

  fail(error) {
    this.dropPreview();
    this.el.dataset.state = "error";
    this.el.querySelector(".info").textContent = `${cfg.strings.failed} ${error?.message || error || ""}`.trim();
  }

  /** Mammography: a right breast faces right and a left one faces left, chest walls meeting in the middle. */
  applyHanging() {
    const side = this.el.dataset.side;
    if (!side || !this.current) return;
    const rows = str(this.current.meta, "00200020").split("\\")[0] || value(this.current.meta, "00200020")?.[0] || "";
    // PatientOrientation's first value: the direction of increasing column index (to the right on screen).
    const posteriorRight = /P/.test(rows);
    const wantPosteriorRight = side === "R";
    if (rows && posteriorRight !== wantPosteriorRight) this.viewport.setCamera({ flipHorizontal: true });
  }

  /** From the image asked for last, not the one on screen: two quick presses while the first image
   * still loads move two images, not one (the index shown catches up when the image arrives). */
  step(delta) { this.go(this.viewport.getTargetImageIdIndex() + delta); }

  go(index, { linked = false } = {}) {
    if (!this.items.length) return;
    const j = Math.min(Math.max(index, 0), this.items.length - 1);
    if (j === this.viewport.getTargetImageIdIndex()) return;
    // A move made by the link does not lead back (the new-image event comes later, asynchronously).
    this.linkedTo = linked ? j : null;
    this.viewport.setImageIdIndex(j);
  }

  onNewImage() {
    if (!this.items.length) return;
    this.index = this.viewport.getCurrentImageIdIndex();
    const item = this.current;
    Object.assign(this.el.dataset, { index: String(this.index), count: String(this.items.length), sop: item.sop,
      frame: String(item.frame) });
    this.el.querySelector(".pos").textContent = `${this.index + 1} / ${this.items.length}`;
    this.showInfo();
    if (this.linkedTo === this.index) this.linkedTo = null;
    else this.viewer.follow(this);
  }

  voi() {
    const range = this.viewport?.getProperties?.().voiRange;
    if (!range) return null;
    const { windowWidth, windowCenter } = coreUtils.windowLevel.toWindowLevel(range.lower, range.upper);
    return { wc: Math.round(windowCenter), ww: Math.round(windowWidth) };
  }

  showInfo() {
    const w = this.items.length ? this.voi() : null;
    if (w) Object.assign(this.el.dataset, { wc: String(w.wc), ww: String(w.ww) });
    this.el.querySelector(".info").textContent = w ? `C ${w.wc} / L ${w.ww}` : "";
  }

  setWindow(wc, ww) {
    if (!this.items.length) return;
    if (wc === null) this.viewport.resetProperties();
    else this.viewport.setProperties({ voiRange: coreUtils.windowLevel.toLowHighRange(ww, wc) });
    this.viewport.render();
    this.showInfo();
  }

  reset() {
    if (!this.items.length) return;
    this.viewport.resetCamera(); this.viewport.resetProperties(); this.applyHanging(); this.viewport.render();
    this.showInfo();
  }

  /** Where the image lies on the canvas, in canvas pixels (for tests and the 1:1 zoom). */
  imageRect() {
    const vp = this.viewport; const image = vp.getImageData();
    const [cols, rows] = image.dimensions;
    const corners = [[0, 0], [cols, rows]].map(([i, j]) => vp.worldToCanvas(image.imageData.indexToWorld(
      [i - 0.5, j - 0.5, 0])));
    const ratio = window.devicePixelRatio || 1;
    const [x0, x1] = [corners[0][0], corners[1][0]].sort((a, b) => a - b);
    const [y0, y1] = [corners[0][1], corners[1][1]].sort((a, b) => a - b);
    return { x: x0 * ratio, y: y0 * ratio, width: (x1 - x0) * ratio, height: (y1 - y0) * ratio, cols, rows };
  }

  /** One image pixel to one screen pixel (full-resolution reading of a mammogram). */
  actualSize() {
    if (!this.items.length) return;
    const { width, cols } = this.imageRect();
    const ratio = window.devicePixelRatio || 1;
    this.viewport.setZoom(this.viewport.getZoom() * (cols / ratio) / (width / ratio));
    this.viewport.render();
  }
}

// -- the viewer ------------------------------------------------------------------------------------

class Viewer {
  constructor() {
    this.panes = []; this.active = null; this.linked = true; this.following = false; this.cine = false;
    this.tool = "wl"; this.mammo = null;
  }

  async start() {
    coreInit();
    if (new URLSearchParams(location.search).get("render") === "cpu") setUseCPURendering(true);
    dicomImageLoader.init({ maxWebWorkers: Math.max(1, Math.min(2, navigator.hardwareConcurrency || 1)) });
    toolsInit();
    document.body.dataset.renderer = getShouldUseCPURendering() ? "cpu" : "gpu";
    new RenderingEngine(ENGINE);
    for (const Tool of [...Object.values(TOOLS), StackScrollTool]) addTool(Tool);
    const group = ToolGroupManager.createToolGroup(GROUP);
    for (const Tool of [...Object.values(TOOLS), StackScrollTool]) group.addTool(Tool.toolName);
    group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    this.useTool("wl");

    for (const el of document.querySelectorAll("section.pane")) this.panes.push(new Pane(el, this));
    for (const pane of this.panes) pane.enable();
    this.activate(this.panes[0]);
    this.bindToolbar();
    this.bindKeys();
    new ResizeObserver(() => getRenderingEngine(ENGINE).resize(true, true)).observe(document.querySelector(".viewer"));
    await Promise.all(this.panes.filter((p) => p.series?.value).map((p) => p.load(p.series.value)));
    document.body.dataset.viewer = "ready";
  }

  activate(pane) {
    this.active = pane;
    for (const p of this.allPanes()) p.el.classList.toggle("active", p === pane);
  }

  allPanes() { return this.mammo ? this.mammo : this.panes; }

  useTool(name) {
    const group = ToolGroupManager.getToolGroup(GROUP);
    for (const [key, Tool] of Object.entries(TOOLS)) {
      if (key !== "pan" && key !== "zoom") group.setToolPassive(Tool.toolName);
    }
    const primary = TOOLS[name].toolName;
    // Pan on the middle button and zoom on the right one whatever the left button does.
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary },
      ...(name === "pan" ? [{ mouseButton: MouseBindings.Primary }] : [])] });
    group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary },
      ...(name === "zoom" ? [{ mouseButton: MouseBindings.Primary }] : [])] });
    if (name !== "pan" && name !== "zoom") {
      group.setToolActive(primary, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    }
    this.tool = name;
    for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === name));
  }

  /** Linked scrolling: the other panes follow the one that moved. */
  follow(source) {
    if (!this.linked || this.following || this.mammo) return;
    this.following = true;
    try {
      for (const target of this.panes) {
        if (target === source || !target.items.length) continue;
        target.go(this.targetIndex(source, target), { linked: true });
      }
    } finally {
      this.following = false;
    }
  }

  /** How the panes are linked: "position" (same frame of reference, or parallel slices kept at the offset
   *  they had when linked) or "index" (proportional), shown on each pane. */
  relink() {
    this.offsets = new Map();
    const [a, b] = this.panes;
    if (!a || !b || !a.items.length || !b.items.length) return;
    const mode = this.linkMode(a, b);
    for (const p of this.panes) p.el.dataset.link = this.linked ? mode : "off";
    if (mode === "position" && a.geometry.frameOfReference !== b.geometry.frameOfReference) {
      const n = a.geometry.normal;
      this.offsets.set(b, dot(b.geometry.positions[b.index], n) - dot(a.geometry.positions[a.index], n));
    }
  }

  linkMode(a, b) {
    const ga = a.geometry; const gb = b.geometry;
    return ga && gb && Math.abs(dot(ga.normal, gb.normal)) > 0.99 && a.items.length > 1 && b.items.length > 1
      ? "position" : "index";
  }

  targetIndex(source, target) {
    if (this.linkMode(source, target) === "position") {
      const n = this.panes[0].geometry.normal;
      const offset = (target === this.panes[0] ? -1 : 1) * (this.offsets.get(this.panes[1]) || 0);
      const want = dot(source.geometry.positions[source.index], n) + offset;
      let best = 0; let distance = Infinity;
      target.geometry.positions.forEach((p, i) => {
        const d = Math.abs(dot(p, n) - want);
        if (d < distance) { best = i; distance = d; }
      });
      return best;
    }
    if (source.items.length < 2) return 0;
    return Math.round(source.index * (target.items.length - 1) / (source.items.length - 1));
  }

  toggleLink() {
    this.linked = !this.linked;
    this.relink();
    document.querySelector("[data-action=link]")?.setAttribute("aria-pressed", String(this.linked));
    if (!this.linked) for (const p of this.panes) p.el.dataset.link = "off";
  }

  toggleCine() {
    const pane = this.active;
    if (!pane?.items.length) return;
    this.cine = !this.cine;
    if (this.cine) {
      const meta = pane.current.meta;
      const rate = Number(first(meta, "00082144")) || Number(first(meta, "00180040"))
        || (Number(first(meta, "00181063")) ? 1000 / Number(first(meta, "00181063")) : 10);
      toolUtils.cine.playClip(pane.stage, { framesPerSecond: Math.min(60, Math.max(1, rate)), loop: true });
      this.cinePane = pane;
    } else if (this.cinePane) {
      toolUtils.cine.stopClip(this.cinePane.stage);
    }
    document.querySelector("[data-action=cine]")?.setAttribute("aria-pressed", String(this.cine));
  }

  preset(n) {
    const select = document.querySelector("select.preset");
    select.selectedIndex = n < select.options.length ? n : 0;
    this.applyPreset();
  }

  applyPreset() {
    const option = document.querySelector("select.preset").selectedOptions[0];
    const wc = option.value ? Number(option.dataset.wc) : null;
    this.active?.setWindow(wc, wc === null ? null : Number(option.dataset.ww));
  }

  async markKeyImage() {
    const pane = this.active; const status = document.querySelector(".key-status");
    if (!cfg.key || !pane?.current || pane.role === "prior") {
      if (status) status.textContent = cfg.strings.keyCurrentOnly;
      return;
    }
    const body = new FormData();
    body.set("csrf_token", cfg.csrf);
    body.set("sop_instance_uid", pane.current.sop);
    body.set("frame", String(pane.current.frame));
    const w = pane.voi();
    if (w) { body.set("wc", String(w.wc)); body.set("ww", String(w.ww)); }
    const r = await fetch(cfg.key, { method: "POST", body, credentials: "same-origin",
      headers: { Accept: "application/json" } });
    status.textContent = r.ok ? cfg.strings.keyChosen.replace("{n}", (await r.json()).position) : cfg.strings.refused;
  }

  /** Mammography hanging: R CC | L CC | R MLO | L MLO from every MG image of the current study. */
  async toggleMammo() {
    const button = document.querySelector("[data-action=mammo]");
    const grid = document.querySelector(".mammo");
    if (this.mammo) {
      for (const p of this.mammo) getRenderingEngine(ENGINE).disableElement(p.viewportId);
      this.mammo = null; grid.hidden = true; document.querySelector(".panes").hidden = false;
      button.setAttribute("aria-pressed", "false");
      getRenderingEngine(ENGINE).resize(true, true);
      this.activate(this.panes[0]);
      return;
    }
    const current = this.panes[0];
    const series = [...current.series.options].filter((o) => o.dataset.modality === "MG").map((o) => o.value);
    const images = (await Promise.all(series.map((s) => loadSeries(current.study, s)))).flat();
    document.querySelector(".panes").hidden = true; grid.hidden = false;
    button.setAttribute("aria-pressed", "true");
    this.mammo = [...grid.querySelectorAll("section.pane")].map((el) => new Pane(el, this));
    for (const pane of this.mammo) {
      pane.enable();
      const [side, v] = [pane.el.dataset.side, pane.el.dataset.view];
      const matches = images.filter((i) => laterality(i.meta) === side && view(i.meta).startsWith(v));
      if (matches.length) await pane.load(null, matches);
      else { pane.el.dataset.state = "empty"; pane.el.querySelector(".info").textContent = cfg.strings.noImage; }
    }
    getRenderingEngine(ENGINE).resize(true, true);
    this.activate(this.mammo[0]);
  }

  bindToolbar() {
    for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => this.useTool(b.dataset.tool));
    const actions = {
      link: () => this.toggleLink(), cine: () => this.toggleCine(), mammo: () => this.toggleMammo(),
      reset: () => this.active?.reset(), actual: () => this.active?.actualSize(), key: () => this.markKeyImage(),
      invert: () => {
        const vp = this.active?.viewport;
        if (vp) { vp.setProperties({ invert: !vp.getProperties().invert }); vp.render(); }
      },
    };
    for (const b of document.querySelectorAll("[data-action]")) b.addEventListener("click", () => actions[b.dataset.action]());
    document.querySelector("select.preset").addEventListener("change", () => this.applyPreset());
    this.actions = actions;
  }

  bindKeys() {
    const keys = { w: "wl", p: "pan", z: "zoom", m: "length", a: "angle", o: "roi" };
    document.addEventListener("keydown", (e) => {
      if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
      const p = this.active;
      if (!p) return;
      if (["ArrowDown", "PageDown", "j"].includes(e.key)) { p.step(e.key === "PageDown" ? 10 : 1); e.preventDefault(); }
      else if (["ArrowUp", "PageUp", "k"].includes(e.key)) { p.step(e.key === "PageUp" ? -10 : -1); e.preventDefault(); }
      else if (e.key === "Home") { p.go(0); e.preventDefault(); }
      else if (e.key === "End") { p.go(p.items.length - 1); e.preventDefault(); }
      else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        const panes = this.allPanes(); const i = panes.indexOf(p);
        this.activate(panes[(i + (e.key === "ArrowRight" ? 1 : panes.length - 1)) % panes.length]);
        e.preventDefault();
      } else if (/^[0-9]$/.test(e.key)) this.preset(Number(e.key));
      else if (keys[e.key]) this.useTool(keys[e.key]);
      else if (e.key === "l") this.actions.link();
      else if (e.key === "c") this.actions.cine();
      else if (e.key === "i") this.actions.invert();
      else if (e.key === "x") this.actions.reset();
    });
  }
}

const viewer = new Viewer();
window.archivageViewer = viewer;  // for tests and the curious
viewer.ready = viewer.start().catch((error) => {
  document.body.dataset.viewer = "error";
  document.querySelectorAll("section.pane .info").forEach((el) => { el.textContent = `${cfg.strings.failed} ${error}`; });
  throw error;
});
export { viewer, cache };
