// The few ComfyUI frontend APIs the Point Picker relies on, each with feature detection so one widget works on
// the pinned frontend (1.32.x) and the newest releases, in the legacy canvas and in Vue nodes mode ("Nodes 2.0").
// No side effects at import (the frontend imports every .js under web/): only functions and module-level maps.

/**
 * Tell the frontend's change tracker that the graph changed: an undo step, the "modified" flag and the workflow
 * persisted for page reloads. Newer frontends name it captureCanvasState() (checkState() is deprecated there);
 * the pinned one only has checkState(). Returns whether a tracker was reached.
 */
export function notifyGraphChanged(app) {
  const tracker = app?.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  const capture = tracker && (tracker.captureCanvasState || tracker.checkState);
  if (typeof capture !== "function") return false;
  capture.call(tracker);
  return true;
}

/** Index of the node's input named `name`, or -1. */
export function inputIndex(node, name) {
  return node.inputs?.findIndex((i) => i.name === name) ?? -1;
}

/**
 * The node connected to the input named `name`, or null. Uses getInputNode(), which the newest frontend keeps
 * supported while it deprecates reading `input.link` directly.
 */
export function upstreamNode(node, name) {
  const idx = inputIndex(node, name);
  if (idx < 0 || !node.graph || typeof node.getInputNode !== "function") return null;
  try {
    return node.getInputNode(idx) || null;
  } catch {
    return null; // the node is between graphs (being removed or configured)
  }
}

// widget -> Set of listeners. The widget's callback is wrapped once; listeners come and go without unwrapping
// it, so other extensions that wrap the same callback after us keep their chain intact.
const widgetListeners = new WeakMap();

/**
 * Call `fn` after the widget's own callback whenever the frontend reports a user change of its value (the
 * frontends call widget.callback for canvas, Vue and DOM edits). Returns the function that stops listening.
 */
export function onWidgetChange(widget, fn) {
  let set = widgetListeners.get(widget);
  if (!set) {
    set = new Set();
    widgetListeners.set(widget, set);
    const original = widget.callback;
    widget.callback = function (...args) {
      const r = original?.apply(this, args);
      for (const listener of [...set]) {
        try {
          listener(widget.value);
        } catch (e) {
          console.error("P3S: widget listener failed", e);
        }
      }
      return r;
    };
  }
  set.add(fn);
  return () => set.delete(fn);
}

/**
 * Hide a widget on every frontend: `hidden` (legacy canvas), `options.hidden` (Vue nodes on the pinned frontend).
 * Frontends that still reserve a layout row for hidden widgets (no LGraphNode.isWidgetRowVisible, e.g. 1.32)
 * get a zero-height computeSize, their documented way to size a widget; newer ones skip hidden rows themselves.
 */
export function hideWidget(node, widget) {
  widget.hidden = true;
  widget.options = widget.options || {};
  widget.options.hidden = true;
  if (typeof node.isWidgetRowVisible !== "function") widget.computeSize = () => [0, -4];
}

// graph -> Map(node id -> element of a removed node's DOM widget), kept only until the current task ends.
const parked = new WeakMap();

/**
 * Remember the element of a DOM widget whose node is being removed, for a node with the same id that may be
 * created in the same synchronous graph rebuild (undo/redo reconfigures the whole graph with new node objects).
 */
export function parkElement(graph, id, element) {
  if (!graph || id == null) return;
  let byId = parked.get(graph);
  if (!byId) parked.set(graph, (byId = new Map()));
  const key = String(id);
  byId.set(key, element);
  // A rebuild is synchronous: anything still parked when the task ends belongs to a node that was just deleted.
  queueMicrotask(() => {
    if (byId.get(key) === element) byId.delete(key);
  });
}

/**
 * Put `element` where the parked element of the node `id` is mounted, when the frontend will not mount it
 * itself. Vue nodes mode keys node and widget components by node id and widget name, so after a rebuild it
 * keeps the old component and never mounts the new node's element (the legacy canvas mounts every new DOM
 * widget itself). Returns whether the element was put in place.
 */
export function adoptParkedElement(graph, id, element, vueNodesMode) {
  const byId = graph && parked.get(graph);
  const old = byId?.get(String(id));
  if (!old) return false;
  byId.delete(String(id));
  if (!vueNodesMode || old === element || !old.isConnected || element.isConnected) return false;
  old.replaceWith(element);
  return true;
}
