// Entry of the single-file browser bundle (`/herald.js` on every node):
// `window.Herald` is the client class, with the rest of the API on it.
import * as api from "./index.js";

const g = globalThis as unknown as { Herald: typeof api.Herald & typeof api };
g.Herald = Object.assign(api.Herald, api);

// `new Herald()` connects to the node that served this file.
const src = (globalThis as { document?: { currentScript?: { src?: string } | null } }).document?.currentScript?.src;
if (src) api.Herald.defaultUrl = new URL(src).origin;
