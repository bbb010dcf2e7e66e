// A drawing turned into what the nets were trained on, the way MNIST made its digits: the ink
// cropped, scaled to fit 20x20 (keeping its shape), and put in a 28x28 image with its centre of
// mass at the centre. White on black, each pixel in [0, 1].

const SIDE = 28;
const BOX = 20;
const INK = 0.05;

// canvas: white strokes on black. Returns 28 rows of 28 numbers, or null if nothing is drawn.
export function toDigit(canvas) {
  const { width, height } = canvas;
  const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  const ink = new Float32Array(width * height);
  for (let i = 0; i < ink.length; i++) ink[i] = rgba[i * 4] / 255;
  const box = inkBox(ink, width, height);
  if (!box) return null;
  const small = shrink(ink, width, height, box);
  return centre(small);
}

function inkBox(ink, width, height) {
  let top = height;
  let bottom = -1;
  let left = width;
  let right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] <= INK) continue;
      top = Math.min(top, y);
      bottom = Math.max(bottom, y);
      left = Math.min(left, x);
      right = Math.max(right, x);
    }
  }
  if (bottom < 0) return null;
  const box = { top, left, height: bottom - top + 1, width: right - left + 1 };
  return { ...box, side: Math.max(box.height, box.width) };
}

// The square around the ink, averaged down to BOX x BOX (area averaging: no aliasing).
function shrink(ink, width, height, box) {
  const top = box.top - (box.side - box.height) / 2;
  const left = box.left - (box.side - box.width) / 2;
  const cell = box.side / BOX;
  const small = new Float32Array(BOX * BOX);
  for (let y = 0; y < BOX; y++) {
    for (let x = 0; x < BOX; x++) {
      let sum = 0;
      let n = 0;
      for (let sy = Math.floor(top + y * cell); sy < Math.ceil(top + (y + 1) * cell); sy++) {
        for (let sx = Math.floor(left + x * cell); sx < Math.ceil(left + (x + 1) * cell); sx++) {
          n++;
          if (sy >= 0 && sy < height && sx >= 0 && sx < width) sum += ink[sy * width + sx];
        }
      }
      small[y * BOX + x] = n ? sum / n : 0;
    }
  }
  return small;
}

function centre(small) {
  let mass = 0;
  let my = 0;
  let mx = 0;
  for (let y = 0; y < BOX; y++) {
    for (let x = 0; x < BOX; x++) {
      const v = small[y * BOX + x];
      mass += v;
      my += v * y;
      mx += v * x;
    }
  }
  const margin = SIDE - BOX;
  const clamp = (v) => Math.max(0, Math.min(margin, Math.round(v)));
  const dy = clamp((SIDE - 1) / 2 - my / mass);
  const dx = clamp((SIDE - 1) / 2 - mx / mass);
  const rows = Array.from({ length: SIDE }, () => new Array(SIDE).fill(0));
  for (let y = 0; y < BOX; y++) {
    for (let x = 0; x < BOX; x++) {
      rows[y + dy][x + dx] = Math.round(small[y * BOX + x] * 1000) / 1000;
    }
  }
  return rows;
}

// Draw 28x28 pixels onto a small canvas, so the user sees what the nets see.
export function paintDigit(canvas, rows) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  rows.flat().forEach((v, i) => {
    image.data.set([v * 255, v * 255, v * 255, 255], i * 4);
  });
  const scratch = new OffscreenCanvas(SIDE, SIDE);
  scratch.getContext("2d").putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}
