import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

/** The project's own long-context test model, shipped in the package (models/quest-tiny-8k). */
export const DEFAULT_MODEL = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'models', 'quest-tiny-8k');
