"""MATH-style answer grading: boxed-answer extraction, normalisation and equivalence.

Used both for RL rewards (called many times per step, so it must be fast and must never hang or raise)
and for MATH / MATH-500 evaluation.

Pipeline of :func:`grade`::

    completion --extract_boxed--> predicted answer --\
                                                      is_equiv --> bool
    gold answer ------------------------------------/

:func:`is_equiv` works in three tiers, cheapest first:

1. **String tier.** Both sides go through :func:`normalize_answer`, a purely syntactic canonicalisation in
   the spirit of the MATH benchmark conventions (``\\dfrac`` -> ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``,
   units / degrees / percent / dollar signs / thousands separators dropped, ``x = `` prefixes removed, ...).
   Equal normal forms are equivalent.
2. **Exact-number tier.** If both normal forms are plain integers or integer fractions, compare them exactly
   with :class:`fractions.Fraction` and decide right away (by far the most common case for MATH answers,
   and it avoids a SymPy round trip).  Word answers (``\\text{even}``, names, ...) are decided by string
   comparison only, because SymPy would read ``east`` and ``seat`` as the same product of four symbols.
3. **Symbolic tier.** Otherwise the normal forms are parsed and compared with math-verify
   (``math_verify.parse`` / ``math_verify.verify``), which handles e.g. ``0.5`` vs ``\\frac{1}{2}``,
   ``2\\sqrt{2}`` vs ``\\sqrt{8}``, reordered sums, intervals, sets and matrices.

Time bound.  math-verify's own timeouts use ``signal.alarm`` and raise ``ValueError`` when called outside the
main thread, and a few inputs (``9^{9^{9^9}}``) make SymPy compute for minutes.  So math-verify is always
called with its timeouts disabled and this module enforces one overall deadline itself:

* in the main thread (POSIX): a ``signal.setitimer`` alarm that raises a private ``BaseException`` subclass
  (math-verify swallows ``Exception`` but lets ``BaseException`` through); any previously armed alarm and
  handler are restored afterwards;
* in any other thread (reward workers, thread pools): the comparison is shipped to a persistent helper
  subprocess (this file run as a script), which uses the alarm in *its* main thread; if it does not answer
  within the deadline plus a grace period it is killed and restarted, so even a computation stuck inside C
  code cannot block the caller.

Every failure mode (parse error, timeout, crashed helper) grades as "not equivalent".

Long because the grader is one algorithm: an ordered cascade of MATH normalisation rules, each a few lines,
plus the deadline machinery above that must wrap exactly that cascade; split, the rules' order (which
matters) would be spread over files.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

__all__ = ["extract_boxed", "normalize_answer", "is_equiv", "grade", "DEFAULT_TIMEOUT"]

#: Default wall-clock budget (seconds) for the symbolic tier of one :func:`is_equiv` call.
DEFAULT_TIMEOUT = 3.0

# Answers longer than this are not handed to SymPy: real final answers are short, while very long "answers"
# (a whole derivation inside a box) are slow to parse and only ever wrong.
_MAX_SYMBOLIC_CHARS = 400

# ----------------------------------------------------------------------------------------------------------
# Boxed-answer extraction
# ----------------------------------------------------------------------------------------------------------

# `\boxed` / `\fbox` not followed by a letter (so `\boxedfoo` is not a box).
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced_group(text: str, start: int) -> tuple[str, int] | None:
    """Return ``(content, end)`` of the balanced ``{...}`` group opening at ``text[start]``.

    ``end`` is the index just after the closing brace.  Escaped braces (``\\{``, ``\\}``) are literal
    characters in LaTeX and do not count towards nesting.  Returns None if the group never closes.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is (`\{`, `\}`, `\\`)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``.

    * Braced form: the content of the balanced group, nested braces included
      (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``).
    * Space form: ``\\boxed 5$`` -> ``5`` (the token up to the next ``$`` or whitespace).

    Only the *last* box counts (models often box intermediate results).  Returns None when there is no
    box, or when the last box is unbalanced (typically a generation truncated mid-answer).
    """
    if not isinstance(text, str):
        return None
    matches = list(_BOX_CMD.finditer(text))
    if not matches:
        return None
    pos = matches[-1].end()
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        group = _braced_group(text, pos + (len(rest) - len(stripped)))
        return None if group is None else group[0]
    if rest[:1].isspace() and stripped:
        # `\boxed 5` (TeX takes the next token as the argument); stop at math delimiter or whitespace.
        m = re.match(r"[^\s$]+", stripped)
        return m.group(0) if m else None
    return None


# ----------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------

# Unit words dropped wherever they appear as whole words (not preceded by a backslash, so `\sec`, `\min`,
# `\deg` survive).  Only multi-letter words here: single letters such as `m` or `s` are variables far more
# often than units, so they are only dropped inside `\text{...}` (see _TEXT_ONLY_UNITS).
_UNIT_WORDS = (
    r"mm|cm|km|meters?|metres?|centimeters?|millimeters?|kilometers?|inch(?:es)?|foot|feet|ft|yards?|yds?"
    r"|miles?|seconds?|secs?|minutes?|hours?|hrs?|days?|weeks?|months?|years?|degrees?|radians?"
    r"|cents?|dollars?|units?|mph|percent|pounds?|lbs?|ounces?|oz|grams?|kg|liters?|litres?|ml|gallons?"
)
_UNIT_PREFIX = r"(?:(?:square|sq\.?|cubic)\s*)?"
_UNIT_POWER = r"(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?"
_BARE_UNIT_RE = re.compile(rf"(?<![\\A-Za-z]){_UNIT_PREFIX}(?:{_UNIT_WORDS})(?![A-Za-z]){_UNIT_POWER}")
_TEXT_ONLY_UNITS = r"m|s|g|h|in|min|deg"
_TEXT_UNIT_RE = re.compile(rf"^\s*{_UNIT_PREFIX}(?:{_UNIT_WORDS}|{_TEXT_ONLY_UNITS})\.?\s*$")

# Text-like wrappers whose content is kept (after unit filtering).
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textup|textnormal|textsf|mbox|mathrm|mathbf|mathit)\s*(?=\{)"
)


def _unwrap_text(s: str) -> str:
    """Replace ``\\text{...}``-like groups by their content; drop groups that only name a unit.

    A dropped unit also takes a directly following power with it (``\\mbox{ inches}^2``).
    """
    out: list[str] = []
    pos = 0
    for _ in range(1000):  # bounded: each round consumes one wrapper
        m = _TEXT_CMD_RE.search(s, pos)
        if m is None:
            break
        group = _braced_group(s, m.end())
        if group is None:
            break
        content, end = group
        out.append(s[pos : m.start()])
        if _TEXT_UNIT_RE.match(content):
            power = re.match(_UNIT_POWER, s[end:])
            end += power.end() if power else 0
            out.append(" ")
        else:
            out.append(content)
        pos = end
    out.append(s[pos:])
    return "".join(out)


def _read_arg(s: str, i: int) -> tuple[str, int] | None:
    """Read one TeX macro argument at ``s[i:]`` (after optional spaces): ``{...}``, ``\\cmd`` or one char."""
    n = len(s)
    while i < n and s[i] == " ":
        i += 1
    if i >= n:
        return None
    if s[i] == "{":
        group = _braced_group(s, i)
        return None if group is None else group
    if s[i] == "\\":
        m = re.match(r"\\(?:[A-Za-z]+|.)", s[i:])
        if m is None:  # a lone trailing backslash
            return None
        return m.group(0), i + m.end()
    if s[i] in "}^_":
        return None
    return s[i], i + 1


def _brace_macro_args(s: str, macro: str, nargs: int) -> str:
    """Rewrite ``\\macro`` arguments into explicit braces: ``\\frac12`` -> ``\\frac{1}{2}``.

    Handles ``\\sqrt[n]{x}``'s optional argument.  Arguments that cannot be read are left untouched.
    """
    pattern = re.compile(rf"\\{macro}(?![A-Za-z])")
    out: list[str] = []
    pos = 0
    while True:
        m = pattern.search(s, pos)
        if m is None:
            break
        out.append(s[pos : m.end()])
        i = m.end()
        if macro == "sqrt":
            opt = re.match(r"\s*\[[^\[\]]*\]", s[i:])
            if opt:
                out.append(opt.group(0).strip())
                i += opt.end()
        args: list[str] = []
        j = i
        for _ in range(nargs):
            arg = _read_arg(s, j)
            if arg is None:
                break
            args.append(arg[0])
            j = arg[1]
        if len(args) == nargs:
            # Recurse into the arguments so nested `\frac12` inside `\frac{\frac12}{3}` is handled too.
            out.append("".join("{" + _brace_macro_args(a, macro, nargs) + "}" for a in args))
            pos = j
        else:
            pos = i
    out.append(s[pos:])
    return "".join(out)


def _strip_spaces(s: str) -> str:
    """Remove all whitespace except a single space separating a control word from a following letter.

    ``\\cot x`` must not become ``\\cotx`` (an unknown macro), but ``1 + 2`` becomes ``1+2``.
    """
    s = re.sub(r"\s+", " ", s.replace("\x00", "")).strip()
    s = re.sub(r"(\\[A-Za-z]+) (?=[A-Za-z])", "\\1\x00", s)  # protect the meaningful spaces
    return s.replace(" ", "").replace("\x00", " ")


_NUMBER_WITH_COMMAS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SINGLE_VAR_LHS = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?$")


def normalize_answer(s: str) -> str:
    """Canonicalise a MATH-style answer string (purely syntactic, never raises on ``str`` input).

    Examples: ``\\dfrac12`` -> ``\\frac{1}{2}``; ``\\left( 3, \\frac{\\pi}{2} \\right)`` ->
    ``(3,\\frac{\\pi}{2})``; ``90^\\circ`` -> ``90``; ``10\\%`` -> ``10``; ``\\$1,000`` -> ``1000``;
    ``864 \\mbox{ inches}^2`` -> ``864``; ``x = 5`` -> ``5``; ``.5`` -> ``0.5``; ``\\sqrt2`` -> ``\\sqrt{2}``;
    ``1\\frac{4}{5}`` (mixed number) -> ``\\frac{9}{5}``; ``\\text{(C)}`` -> ``C``.
    Intervals, tuples, sets and matrices keep their structure; only spacing / macro spelling changes.
    """
    if not isinstance(s, str):
        s = str(s)
    # Protect TeX line breaks (`\\\\`, e.g. matrix rows) so that rules for `\\ `, `\\!` ... cannot split them.
    s = s.replace("\x01", "").replace("\\\\", "\x01").strip()
    # Unicode look-alikes that models emit.
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00b0", "^\\circ")
    s = s.replace("\u221e", "\\infty ").replace("\u03c0", "\\pi ")

    # Thousands separators written the TeX way (`10,\!080`, `1{,}000`) are unambiguous: merge them before
    # `\!` is discarded, because afterwards `11,\! 111` would look like a list.
    s = re.sub(r"(\d)\s*(?:,\s*\\!|\{,\})\s*(?=\d{3}(?!\d))", r"\1", s)

    # Dollar signs (currency `\$`, math delimiters `$`) and the other math delimiters `\( \) \[ \]`.
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    # Sizing / spacing macros carry no meaning.
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)\s*\.", "", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = re.sub(r"\\displaystyle(?![A-Za-z])", "", s)
    s = s.replace("\\!", "")
    s = re.sub(r"\\[,:; ]|\\q?quad(?![A-Za-z])|~", " ", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"(?<=\{)bmatrix(?=\})", "pmatrix", s)  # `\begin{bmatrix}` and `\begin{pmatrix}` are the same
    s = re.sub(r"\\(le|ge|ne)q(?![A-Za-z])", r"\\\1", s)

    # Degrees and percent.
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])", "", s)
    s = s.replace("\\%", "").replace("%", "")

    # `\text{...}`: unwrap words, drop units; then drop bare unit words (`5 cm`, `90 degrees`).
    s = _unwrap_text(s)
    without_units = _BARE_UNIT_RE.sub(" ", s)
    if without_units.strip():
        s = without_units

    # Explicit braces for macro arguments and single-token super/subscripts: `\frac12`, `\sqrt2`, `x^2`.
    s = _brace_macro_args(s, "frac", 2)
    s = _brace_macro_args(s, "binom", 2)
    s = _brace_macro_args(s, "sqrt", 1)
    s = re.sub(r"([\^_])\s*([0-9A-Za-z]|\\[A-Za-z]+)", r"\1{\2}", s)

    s = _strip_spaces(s)

    # `.5` -> `0.5` (but not the `.` of `\ldots` or a trailing full stop).
    s = re.sub(r"(?<![\d\\A-Za-z])\.(?=\d)", "0.", s)
    s = s.rstrip(".")
    s = s.rstrip("\x01")  # a stray trailing line break

    # `x = 5`, `y=2x+3`, `x \in [-2,7]`: drop the variable for single-variable answers.
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _SINGLE_VAR_LHS.match(lhs) and rhs:
            s = rhs
    m = re.match(r"^([A-Za-z])\\in(?![A-Za-z])(.+)$", s)
    if m:
        s = m.group(2)

    # Whole-answer numeric conveniences.
    if _NUMBER_WITH_COMMAS.match(s):
        s = s.replace(",", "")
    m = re.match(r"^([+-]?)(\d+)/(\d+)$", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.match(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$", s)
    if m and 0 < int(m.group(3)) < int(m.group(4)):
        # Mixed number `1\frac{4}{5}` means 1 + 4/5, not 1 * 4/5.
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        s = f"{m.group(1)}\\frac{{{whole * den + num}}}{{{den}}}"
    m = re.match(r"^\(([A-Z])\)$", s)  # multiple-choice letter `(C)` -> `C`
    if m:
        s = m.group(1)
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    return s.replace("\x01", "\\\\")


# ----------------------------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^-?\d+$")
_DEC_RE = re.compile(r"^-?\d+\.\d+$")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_WORD_RE = re.compile(r"^[A-Za-z]{2,}$")


def _exact_number(s: str) -> tuple[Fraction, bool] | None:
    """Parse a normalised answer that is a plain number: ``(value, is_decimal)`` or None."""
    if len(s) > 60:  # huge literals are not worth converting; SymPy will look at them if needed
        return None
    if _INT_RE.match(s):
        return Fraction(int(s)), False
    if _DEC_RE.match(s):
        return Fraction(s), True
    m = _FRAC_RE.match(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), False
    return None


class _Deadline(BaseException):
    """Raised by the alarm handler.  A BaseException so math-verify's ``except Exception`` cannot eat it."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`_Deadline` in the main thread after ``seconds`` (POSIX interval timer).

    Restores the previous SIGALRM handler and re-arms any previously pending timer (minus elapsed time).
    """
    armed = True

    def handler(signum: int, frame: object) -> None:
        if armed:  # the alarm may land while we are already cleaning up; then it must not raise
            raise _Deadline()

    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    start = time.monotonic()
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


_MV_LOCK = threading.Lock()
_MV_MODULES: tuple | None = None


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeouts are disabled; we disable them on purpose (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


def _math_verify() -> tuple:
    """Import math-verify lazily (it pulls in SymPy, ~1 s) and return ``(parse, verify)``."""
    global _MV_MODULES
    if _MV_MODULES is None:
        with _MV_LOCK:
            if _MV_MODULES is None:
                from math_verify import parse, verify

                for name in ("math_verify.parser", "math_verify.grader"):
                    logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
                _MV_MODULES = (parse, verify)
    return _MV_MODULES


def _symbolic_equiv_unguarded(pred: str, gold: str) -> bool:
    """math-verify comparison of two normalised answers, with no time limit of its own."""
    parse, verify = _math_verify()
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _symbolic_equiv_main_thread(pred: str, gold: str, timeout: float) -> bool:
    """Symbolic tier in the main thread, bounded by a SIGALRM deadline."""
    try:
        # Import outside the deadline: the first import takes seconds, and an import interrupted half-way
        # could leave SymPy partially initialised for the rest of the process.
        _math_verify()
        with _alarm(timeout):
            return _symbolic_equiv_unguarded(pred, gold)
    except _Deadline:
        return False
    except Exception:
        return False


class _Worker:
    """A helper subprocess (this file run as a script) that answers symbolic comparisons.

    Used off the main thread, where SIGALRM is unavailable.  Requests are serialised with a lock; a worker
    that misses its deadline is killed (the only way to stop SymPy stuck in C code) and lazily restarted.
    """

    #: Extra seconds granted on top of the per-call timeout for process start-up / IPC.
    GRACE = 2.0
    #: Budget for the first start (importing SymPy and math-verify in a fresh interpreter).
    STARTUP = 60.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def after_fork_in_child(self) -> None:
        # A forked child must not talk to (or kill) its parent's worker, and the lock may have been held by
        # another thread at fork time: forget both; the child starts its own worker if it needs one.
        self._reset()

    def _start(self) -> bool:
        # `-P` keeps cola/eval out of sys.path[0]; `-u` unbuffers stdout so answers arrive immediately.
        cmd = [sys.executable, "-P", "-u", str(Path(__file__).resolve()), "--serve"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self._buf = b""
        return self._readline(self.STARTUP) == b"ready"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)

    def _readline(self, timeout: float) -> bytes | None:
        """Read one line from the worker, or None on timeout / EOF."""
        import select

        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.strip()

    def equiv(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            try:
                if (self._proc is None or self._proc.poll() is not None) and not self._start():
                    self._kill()
                    return False
                assert self._proc is not None and self._proc.stdin is not None
                request = json.dumps({"pred": pred, "gold": gold, "timeout": timeout}) + "\n"
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
                line = self._readline(timeout + self.GRACE)
                if line is None:
                    self._kill()
                    return False
                return bool(json.loads(line)["equiv"])
            except Exception:
                self._kill()
                return False

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _Worker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.after_fork_in_child)


def _symbolic_equiv(pred: str, gold: str, timeout: float) -> bool:
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _symbolic_equiv_main_thread(pred, gold, timeout)
    return _WORKER.equiv(pred, gold, timeout)


def is_equiv(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True if answer ``pred`` is mathematically equivalent to reference answer ``gold``.

    Both are bare answers (e.g. the content of a ``\\boxed{}``), LaTeX or plain text.  See the module
    docstring for the three tiers.  Never raises; anything unparseable or slower than ``timeout`` seconds
    (symbolic tier) counts as not equivalent.
    """
    try:
        if pred is None or gold is None:
            return False
        p, g = normalize_answer(pred), normalize_answer(gold)
        if not p or not g:
            return False
        if p == g:
            return True
        if _WORD_RE.match(p) or _WORD_RE.match(g):
            return p.casefold() == g.casefold()
        p_num, g_num = _exact_number(p), _exact_number(g)
        if p_num is not None and g_num is not None:
            if p_num[0] == g_num[0]:
                return True
            if not (p_num[1] or g_num[1]):
                return False  # both exact (integers / fractions) and different: no tolerance applies
            # A decimal on either side: let math-verify apply its rounding tolerance (0.333333 vs 1/3).
        if len(p) > _MAX_SYMBOLIC_CHARS or len(g) > _MAX_SYMBOLIC_CHARS:
            return False
        return _symbolic_equiv(p, g, timeout)
    except Exception:
        return False


def grade(completion: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True if the last boxed answer in ``completion`` is equivalent to ``gold``; False if nothing is boxed.

    ``gold`` is normally a bare answer; if it contains a box itself (e.g. a whole reference solution), its
    last boxed answer is used.
    """
    try:
        pred = extract_boxed(completion)
        if pred is None:
            return False
        if isinstance(gold, str) and _BOX_CMD.search(gold):
            boxed_gold = extract_boxed(gold)
            if boxed_gold is None:
                return False
            gold = boxed_gold
        return is_equiv(pred, gold, timeout=timeout)
    except Exception:
        return False


def _serve() -> None:
    """Worker loop: one JSON request per stdin line, one ``{"equiv": bool}`` per stdout line."""
    logging.basicConfig(level=logging.ERROR)
    _math_verify()  # import before announcing readiness, so the parent's per-call deadline is fair
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = _symbolic_equiv_main_thread(str(req["pred"]), str(req["gold"]), float(req["timeout"]))
        except Exception:
            ok = False
        out.write(json.dumps({"equiv": ok}) + "\n")
        out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
