import cliProgress from 'cli-progress';

/** A progress bar on stderr that appears only for work long enough to watch (and only on a terminal). */
export function progressBar(label: string, unit: string) {
  let bar: cliProgress.SingleBar | null = null;
  const t0 = Date.now();
  return {
    update(done: number, total: number) {
      if (!process.stderr.isTTY) return;
      if (!bar) {
        if (Date.now() - t0 < 300 && done < total) return;
        if (done >= total && Date.now() - t0 < 300) return;
        bar = new cliProgress.SingleBar({
          format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | ETA {eta_formatted}`, stream: process.stderr, hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        bar.start(Math.round(total), 0);
      }
      bar.update(Math.round(done));
    },
    stop() { bar?.stop(); bar = null; },
  };
}
