import { fileURLToPath } from 'node:url';

const url = new URL('../../models/quest-tiny-8k/', import.meta.url);

/** The project's own long-context test model, shipped in the package (models/quest-tiny-8k): a path in
 *  Node; in the browser bundle (dist/browser/quest.js, as deep in the package) the folder's URL. */
export const DEFAULT_MODEL = url.protocol === 'file:' ? fileURLToPath(url).replace(/[\\/]$/, '') : url.href;
