// Terminal output to DOM: ANSI SGR colours and styles become <span>s with classes (app.css),
// everything else is text. Text is only ever added as text nodes, so output holding HTML shows
// as the characters it is. Other escape sequences (cursor moves, titles) are dropped.

const CSI = /^\x1b\[([0-?]*)[ -\/]*([@-~])/;
const OSC_END = /\x07|\x1b\\/;
const MAX_PENDING = 256; // an unfinished escape longer than this is not one: shown as text

function defaultStyle() {
  return {
    fg: null,
    bg: null,
    bold: false,
    dim: false,
    italic: false,
    underline: false,
    inverse: false,
    strike: false,
  };
}

/** The 256-colour palette beyond the 16 named colours, as CSS colours. */
function paletteColour(n) {
  if (n < 232) {
    const level = (v) => (v === 0 ? 0 : 55 + v * 40);
    const i = n - 16;
    return `rgb(${level(Math.floor(i / 36))}, ${level(Math.floor(i / 6) % 6)}, ${level(i % 6)})`;
  }
  const grey = 8 + (n - 232) * 10;
  return `rgb(${grey}, ${grey}, ${grey})`;
}

export class AnsiRenderer {
  /** `target`: the element output is appended to; `maxChars`: how much it keeps. */
  constructor(target, { maxChars = 2_000_000, onTrim = () => {} } = {}) {
    this.target = target;
    this.maxChars = maxChars;
    this.onTrim = onTrim;
    this.style = defaultStyle();
    this.pending = "";
    this.chars = 0;
    this.trimmed = 0;
    this.lastKey = null;
    this.lastNode = null; // the text node of the last piece
    this.lastTop = null; // that node, or the span holding it
  }

  write(text) {
    let rest = this.pending + text;
    this.pending = "";
    while (rest.length > 0) {
      const esc = rest.indexOf("\x1b");
      if (esc === -1) {
        this.text(rest);
        break;
      }
      if (esc > 0) this.text(rest.slice(0, esc));
      rest = rest.slice(esc);
      const used = this.escape(rest);
      if (used === 0) {
        // unfinished: keep it for the next chunk, unless it can no longer be an escape
        if (rest.length > MAX_PENDING) {
          this.text(rest.slice(0, 1));
          rest = rest.slice(1);
          continue;
        }
        this.pending = rest;
        break;
      }
      rest = rest.slice(used);
    }
    this.trim();
  }

  /** Consume one escape sequence at the start of `s`; its length, or 0 if it is unfinished. */
  escape(s) {
    if (s.length < 2) return 0;
    if (s[1] === "[") {
      const match = CSI.exec(s);
      if (!match) return /^\x1b\[[0-?]*[ -\/]*$/.test(s) ? 0 : 1;
      if (match[2] === "m") this.sgr(match[1]);
      return match[0].length;
    }
    if (s[1] === "]") {
      const end = OSC_END.exec(s);
      return end ? end.index + end[0].length : 0;
    }
    return 2; // a two-character escape (ESC 7, ESC =, ...): ignored
  }

  sgr(params) {
    const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) this.style = defaultStyle();
      else if (c === 1) this.style.bold = true;
      else if (c === 2) this.style.dim = true;
      else if (c === 3) this.style.italic = true;
      else if (c === 4) this.style.underline = true;
      else if (c === 7) this.style.inverse = true;
      else if (c === 9) this.style.strike = true;
      else if (c === 22) this.style.bold = this.style.dim = false;
      else if (c === 23) this.style.italic = false;
      else if (c === 24) this.style.underline = false;
      else if (c === 27) this.style.inverse = false;
      else if (c === 29) this.style.strike = false;
      else if (c >= 30 && c <= 37) this.style.fg = c - 30;
      else if (c >= 90 && c <= 97) this.style.fg = c - 90 + 8;
      else if (c === 39) this.style.fg = null;
      else if (c >= 40 && c <= 47) this.style.bg = c - 40;
      else if (c >= 100 && c <= 107) this.style.bg = c - 100 + 8;
      else if (c === 49) this.style.bg = null;
      else if (c === 38 || c === 48) {
        const [colour, used] = extendedColour(codes, i + 1);
        if (colour !== undefined) this.style[c === 38 ? "fg" : "bg"] = colour;
        i += used;
      }
    }
  }

  text(s) {
    if (!s) return;
    const key = JSON.stringify(this.style);
    // Same style as the last piece, still shown: grow its text node instead of adding one.
    if (key === this.lastKey && this.lastTop && this.lastTop.parentNode === this.target) {
      this.lastNode.appendData(s);
    } else {
      const node = document.createTextNode(s);
      const styled = this.styledSpan();
      if (styled) styled.append(node);
      this.lastTop = styled || node;
      this.target.append(this.lastTop);
      this.lastKey = key;
      this.lastNode = node;
    }
    this.chars += s.length;
  }

  styledSpan() {
    const st = this.style;
    let fg = st.fg;
    let bg = st.bg;
    if (st.inverse) [fg, bg] = [bg === null ? "default-bg" : bg, fg === null ? "default-fg" : fg];
    const classes = [];
    const inline = {};
    for (const [kind, colour] of [
      ["fg", fg],
      ["bg", bg],
    ]) {
      if (colour === null) continue;
      if (typeof colour === "number" && colour < 16) classes.push(`ansi-${kind}-${colour}`);
      else if (typeof colour === "number") inline[kind] = paletteColour(colour);
      else if (colour.startsWith("default")) classes.push(`ansi-${kind}-${colour}`);
      else inline[kind] = colour;
    }
    for (const flag of ["bold", "dim", "italic", "underline", "strike"])
      if (st[flag]) classes.push(`ansi-${flag}`);
    if (classes.length === 0 && !inline.fg && !inline.bg) return null;
    const span = document.createElement("span");
    span.className = classes.join(" ");
    // CSSOM properties, not a style attribute: allowed by the page's CSP (no inline styles).
    if (inline.fg) span.style.color = inline.fg;
    if (inline.bg) span.style.backgroundColor = inline.bg;
    return span;
  }

  /** Keep at most maxChars in the page: drop the oldest text (the API has the whole output). */
  trim() {
    if (this.chars <= this.maxChars) return;
    // Down to 90 %, so that a steady stream trims now and then rather than at every write.
    let excess = this.chars - Math.floor(this.maxChars * 0.9);
    while (excess > 0 && this.target.firstChild) {
      const first = this.target.firstChild;
      const textNode = first.nodeType === Node.TEXT_NODE ? first : first.firstChild;
      const length = first.textContent.length;
      let removed = length;
      if (length > excess && textNode) {
        textNode.deleteData(0, excess);
        removed = excess;
      } else {
        first.remove();
      }
      excess -= removed;
      this.chars -= removed;
      this.trimmed += removed;
    }
    this.onTrim(this.trimmed);
  }
}

/** `38;5;N` or `38;2;R;G;B` from codes[i...]: [colour, codes used]. */
function extendedColour(codes, i) {
  if (codes[i] === 5 && i + 1 < codes.length) return [clamp(codes[i + 1], 255), 2];
  if (codes[i] === 2 && i + 3 < codes.length) {
    const [r, g, b] = codes.slice(i + 1, i + 4).map((v) => clamp(v, 255));
    return [`rgb(${r}, ${g}, ${b})`, 4];
  }
  return [undefined, codes.length - i];
}

function clamp(value, max) {
  return Number.isFinite(value) ? Math.min(Math.max(Math.trunc(value), 0), max) : 0;
}
