"""The check runner: one OK, FAIL or SKIP line per check, and the counts.

A check that cannot run raises Skip; it is counted as skipped, never as passed.
"""

from pathlib import Path


class Skip(Exception):
    """Raised by a check that cannot run; the message says why."""


def must(cond, msg):
    if not cond:
        raise AssertionError(msg)


def read_text(path):
    """The file's text; a missing file is a failure that names it."""
    path = Path(path)
    must(path.is_file(), f"{path}: missing")
    return path.read_text()


class Runner:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def report(self, name, status, text=None):
        """Print one result line; status is "OK", "FAIL" or "SKIP"."""
        if status == "OK":
            self.passed += 1
            line = f"OK   {name}" + (f" ({text})" if text else "")
        else:
            if status == "FAIL":
                self.failed += 1
            else:
                self.skipped += 1
            text = (text or "").strip().replace("\n", "\n       ")
            line = f"{status:<4} {name}: {text}"
        print(line, flush=True)

    def check(self, name, fn, *args):
        """Run fn(*args): a returned string is a note, Skip a skip, any other exception a failure."""
        try:
            note = fn(*args)
        except Skip as e:
            self.report(name, "SKIP", str(e))
        except AssertionError as e:
            self.report(name, "FAIL", str(e))
        except Exception as e:  # every failure is reported, not raised
            self.report(name, "FAIL", f"{type(e).__name__}: {e}")
        else:
            self.report(name, "OK", note)

    def summary(self):
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
