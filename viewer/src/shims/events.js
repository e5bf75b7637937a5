// Node's "events", as far as xmlbuilder2 (pulled in by vtk.js's XML reader, unused by the viewer) needs it
// at load time: a class to extend. Keeps Node's module out of a browser bundle.
export class EventEmitter {
  constructor() { this._handlers = new Map(); }
  on(name, fn) { (this._handlers.get(name) || this._handlers.set(name, []).get(name)).push(fn); return this; }
  emit(name, ...args) { for (const fn of this._handlers.get(name) || []) fn(...args); return this; }
}
export default EventEmitter;
