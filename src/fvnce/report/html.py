"""HTML building blocks: escaping, number formatting, tables, images and the page shell.

Every piece of text that comes from files (names, notes, errors, labels) goes through
:func:`esc`; numbers are formatted here. The page is self-contained: inline CSS, images as
``data:`` URIs, one small inline script (ours) allowed by its hash in a Content-Security-Policy
that blocks everything else, including any network access.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Any, Iterable, Sequence

from ..numfmt import DASH, bounded, finite, fmt_count, fmt_frac, fmt_pct

__all__ = ["DASH", "as_dict", "bounded", "esc", "fmt_count", "fmt_frac", "fmt_num", "fmt_pct", "fmt_time", "img",
           "kv_table", "page", "section", "table"]


def as_dict(obj: Any) -> dict:
    """``obj`` when it is a dict, else an empty one (file contents may be anything)."""
    return obj if isinstance(obj, dict) else {}


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes included, safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_num(x: Any, digits: int = 3) -> str:
    v = finite(x)
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_time(seconds: Any) -> str:
    s = finite(seconds)
    if s is None:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60))} s"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60))} min"


def img(png: bytes, alt: str, cls: str = "") -> str:
    """``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<img{klass} src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def table(header: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], cls: str = "") -> str:
    """Table wrapped in a horizontally scrollable container.

    ``header`` cells are escaped here; ``rows`` are ``(cells, row_class)`` whose cells are
    already HTML (callers escape user text); a row of one cell spans the whole table.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for cells, row_cls in rows:
        attr = f' class="{esc(row_cls)}"' if row_cls else ""
        if len(cells) == 1 and len(header) > 1:  # a full-width row (e.g. an error message)
            body.append(f'<tr{attr}><td colspan="{len(header)}"><div class="row-text">{cells[0]}</div></td></tr>')
        else:
            body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    klass = f' class="{esc(cls)}"' if cls else ""
    return (f'<div class="table-wrap"><table{klass}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def kv_table(pairs: Iterable[tuple[str, str]]) -> str:
    """Two-column key/value table; keys are escaped, values are HTML."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<div class="table-wrap"><table class="kv"><tbody>{rows}</tbody></table></div>'


def section(anchor: str, title: str, explain: str, body: str) -> str:
    """A report section: its anchor, its title (escaped), how to read it (HTML) and its body (HTML)."""
    return (f'<section id="{anchor}"><h2>{esc(title)}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')


_CSS = """
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0 auto;padding:1rem 1.2rem 3rem;max-width:1100px;font-family:system-ui,-apple-system,
"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;font-size:15px;line-height:1.5;color:#1d2430;
background:#fff;overflow-wrap:anywhere}
h1{font-size:1.6rem;margin:.4rem 0 .2rem}
h2{font-size:1.25rem;margin:2rem 0 .3rem;padding-bottom:.2rem;border-bottom:2px solid #e3e8ef}
h3{font-size:1.02rem;margin:1.2rem 0 .3rem}
p.lead,p.explain{color:#4a5566;margin:.2rem 0 .8rem}
.meta{color:#5b6677;font-size:.9rem}
img{max-width:100%;height:auto;display:block}
figure{margin:.4rem 0 1rem;max-width:100%}
figcaption{font-size:.85rem;color:#5b6677}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,330px),1fr));gap:1rem}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(min(100%,480px),1fr))}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5rem 0 1rem;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.88rem}
th,td{border:1px solid #dde3ea;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:normal}
td ul{margin:0;padding-left:1.1rem}
table.compare{width:100%;font-size:.84rem}
table.compare th,table.compare td{padding:.25rem .35rem}
table.compare td:first-child:not([colspan]){min-width:9.5rem;overflow-wrap:anywhere}
table.compare th:first-child,table.compare td:first-child:not([colspan]){position:sticky;left:0;z-index:1;
background:inherit}
table.compare thead th:first-child{z-index:2}
table.compare tbody tr{background:#fff}
.row-text{position:sticky;left:.35rem;max-width:calc(100vw - 4rem)}
.nowrap{white-space:nowrap}
thead th{background:#f3f6f9;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:#f7f9fb;font-weight:600;white-space:nowrap}
table.compare tbody tr.rec{background:#fff6d6}
tr.rec td{font-weight:600}
table.compare tbody tr.bad{background:#fdf1f1}
tr.bad td{color:#8a1c1c}
table.compare tbody tr.degraded{background:#fff4e5}
table.compare tbody tr.unreliable{background:#f6f2fb}
table.compare tbody tr.warn.detail{background:#fffaf0}
tr.warn.detail td{color:#5a3d00}
table.grid-family td{min-width:5rem}
pre.command{margin:.3rem 0 .8rem;padding:.5rem .7rem;background:#f3f6f9;border:1px solid #dde3ea;
border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.82rem;user-select:all}
.warn-text{color:#8a5a00}
tr.first td{border-bottom:none}
tr.detail td{border-top:none;padding-top:0}
.tag{display:inline-block;font-size:.72rem;padding:0 .35rem;border-radius:.5rem;font-weight:700}
.tag.degraded{background:#e67700;color:#fff}
.tag.unreliable{background:#6f42c1;color:#fff}
p.verdict{margin:.3rem 0}
.bad-text{color:#8a1c1c}
.verdict-box{border-left-color:#1565c0;background:#f4f8fd}
.badge{display:inline-block;font-size:.75rem;padding:0 .4rem;border-radius:.6rem;
background:#f2b705;color:#222;font-weight:700;margin-left:.3rem}
.small{font-size:.8rem;color:#5b6677;font-weight:normal}
.err{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.78rem;white-space:pre-wrap;
color:#8a1c1c;font-weight:normal;overflow-wrap:anywhere}
.card{border:1px solid #e3e8ef;border-left:5px solid #2e7d32;border-radius:6px;padding:.8rem 1rem;
background:#f7fbf7;margin:.6rem 0 1rem}
.card.none{border-left-color:#999;background:#f7f7f7}
p.headline-what{margin:.6rem 0 .2rem}
.headline{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,230px),1fr));
gap:.8rem;margin:.6rem 0}
.headline div{background:#fff;border:1px solid #e3e8ef;border-radius:6px;padding:.5rem .7rem}
.headline b{display:block;font-size:1.35rem;color:#1b5e20}
.card-compare{display:block;margin-top:.3rem;font-size:.85rem;color:#4a5566}
.note{background:#f3f6f9;border-radius:6px;padding:.5rem .8rem;color:#4a5566}
dl.glossary dt{font-weight:700;margin-top:.6rem}
dl.glossary dd{margin:0 0 0 1rem;color:#333}
.best-cell{font-weight:700;color:#1b5e20}
#fvnce-check{display:none}
"""

# Our own self-check (not user-controlled). After load, it records whether every image decoded
# and whether anything sticks out of the window or out of a clipping container; tests read the
# result from the DOM (``--dump-dom``). It changes nothing visible.
_CHECK_JS = """
window.addEventListener('load',function(){
var out=[],imgs=document.images,ok=0,i;
for(i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}
else{out.push('image not loaded: '+(imgs[i].alt||i));}}
var vw=document.documentElement.clientWidth,sw=document.documentElement.scrollWidth;
if(sw>window.innerWidth){out.push('page wider than window: '+sw+'>'+window.innerWidth);}
function clipper(el){for(var p=el.parentElement;p&&p!==document.body;p=p.parentElement){
var o=getComputedStyle(p).overflowX;if(o!=='visible'){return p;}}return null;}
var els=document.body.getElementsByTagName('*');
for(i=0;i<els.length;i++){var el=els[i],r=el.getBoundingClientRect();
if(r.width===0&&r.height===0){continue;}
var c=clipper(el),limit=vw;
if(c){var o=getComputedStyle(c).overflowX;if(o==='auto'||o==='scroll'){continue;}
limit=c.getBoundingClientRect().right;}
if(r.right>limit+1){out.push('cut off: <'+el.tagName.toLowerCase()+'> right='+Math.round(r.right)+'>'+Math.round(limit));}}
var t=document.querySelectorAll('img,table');
for(i=0;i<t.length;i++){var p=t[i].parentElement,pr=p.getBoundingClientRect(),er=t[i].getBoundingClientRect();
var po=getComputedStyle(p).overflowX;
if(er.right>pr.right+1&&po!=='auto'&&po!=='scroll'){out.push('overflows container: <'+t[i].tagName.toLowerCase()+'>');}}
var res=(out.length?'FAIL ':'OK ')+'images '+ok+'/'+imgs.length+' loaded; '+
(out.length?out.slice(0,20).join('; '):'nothing cut off')+'; width '+sw+'/'+window.innerWidth;
document.getElementById('fvnce-check').textContent=res;
var m=document.querySelector('meta[name="fvnce-check"]');if(m){m.setAttribute('content',res);}
});
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_CHECK_JS.encode("utf-8")).digest()).decode("ascii")
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def page(title: str, body: str) -> str:
    """Complete HTML document; ``title`` is escaped here, ``body`` is already HTML."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp())}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="fvnce-check" content="pending">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<div id=\"fvnce-check\" hidden>pending</div>\n"
        f"<script>{_CHECK_JS}</script>\n</body>\n</html>\n"
    )

