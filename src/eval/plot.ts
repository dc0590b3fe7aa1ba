// Small SVG charts for the evaluations: a line chart (metric vs budget per policy) and a heatmap
// (depth x length). Plain SVG text so results can be viewed in any browser or README.

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#17becf'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export interface Series { name: string; points: { x: number; y: number }[] }

/** y vs x (x on a log2 axis, as budgets are), one line per series. */
export function lineChart(title: string, xLabel: string, yLabel: string, series: Series[], yMin = 0, yMax = 1): string {
  const W = 640, H = 400, L = 60, R = 160, T = 40, B = 50;
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const lx = (x: number) => (xs.length < 2 ? L + (W - L - R) / 2 : L + ((Math.log2(x) - Math.log2(xs[0])) / (Math.log2(xs[xs.length - 1]) - Math.log2(xs[0]))) * (W - L - R));
  const ly = (y: number) => T + (1 - (y - yMin) / (yMax - yMin || 1)) * (H - T - B);
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2 - R / 2}" y="22" text-anchor="middle" font-size="14">${esc(title)}</text>`];
  for (let i = 0; i <= 4; i++) {
    const y = yMin + ((yMax - yMin) * i) / 4;
    out.push(`<line x1="${L}" x2="${W - R}" y1="${ly(y)}" y2="${ly(y)}" stroke="#ddd"/>`, `<text x="${L - 6}" y="${ly(y) + 4}" text-anchor="end">${+y.toFixed(3)}</text>`);
  }
  for (const x of xs) out.push(`<text x="${lx(x)}" y="${H - B + 16}" text-anchor="middle">${x}</text>`);
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text transform="translate(16 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length], pts = [...s.points].sort((a, b) => a.x - b.x);
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.map((p) => `${lx(p.x)},${ly(p.y)}`).join(' ')}"/>`);
    for (const p of pts) out.push(`<circle cx="${lx(p.x)}" cy="${ly(p.y)}" r="3" fill="${c}"/>`);
    out.push(`<rect x="${W - R + 12}" y="${T + i * 18}" width="12" height="12" fill="${c}"/>`, `<text x="${W - R + 30}" y="${T + i * 18 + 10}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

/** cells[row][col] in [0, 1]; rows are depths, columns lengths. */
export function heatmap(title: string, rowLabels: string[], colLabels: string[], cells: (number | null)[][], rowName: string, colName: string): string {
  const cw = 70, ch = 28, L = 90, T = 50;
  const W = Math.max(320, L + cw * colLabels.length + 20), H = T + ch * rowLabels.length + 50;
  const color = (v: number) => `rgb(${Math.round(215 - 180 * v)},${Math.round(48 + 150 * v)},${Math.round(39 + 60 * v)})`;
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="20" text-anchor="middle" font-size="13">${esc(title)}</text>`];
  colLabels.forEach((c, j) => out.push(`<text x="${L + j * cw + cw / 2}" y="${T - 8}" text-anchor="middle">${esc(c)}</text>`));
  rowLabels.forEach((r, i) => {
    out.push(`<text x="${L - 8}" y="${T + i * ch + ch / 2 + 4}" text-anchor="end">${esc(r)}</text>`);
    colLabels.forEach((_, j) => {
      const v = cells[i][j];
      out.push(`<rect x="${L + j * cw}" y="${T + i * ch}" width="${cw - 2}" height="${ch - 2}" fill="${v === null ? '#eee' : color(v)}"/>`);
      if (v !== null) out.push(`<text x="${L + j * cw + cw / 2}" y="${T + i * ch + ch / 2 + 4}" text-anchor="middle" fill="white">${(v * 100).toFixed(0)}%</text>`);
    });
  });
  out.push(`<text x="${L + (cw * colLabels.length) / 2}" y="${H - 14}" text-anchor="middle">${esc(colName)}</text>`,
    `<text transform="translate(14 ${T + (ch * rowLabels.length) / 2}) rotate(-90)" text-anchor="middle">${esc(rowName)}</text>`, '</svg>');
  return out.join('\n');
}
