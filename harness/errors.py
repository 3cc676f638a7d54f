"""User-facing errors: a mistake the user can fix (bad config, missing or damaged data, OOM, NaN loss).

Entry points catch `UserError` and print its message as one line with a non-zero exit, never a traceback;
every message names the problem and the fix.
"""


class UserError(Exception):
    exit_code = 2
