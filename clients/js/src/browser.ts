// Entry of the single-file browser bundle (`/herald.js` on every node):
// `window.Herald` is the client class, with the rest of the API on it.
import * as api from "./index.js";

const g = globalThis as unknown as { Herald: typeof api.Herald & typeof api };
g.Herald = Object.assign(api.Herald, api);
