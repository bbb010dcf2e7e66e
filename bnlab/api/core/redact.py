"""Error texts fit to show: a driver's message may quote its connection URL, password included."""

from urllib.parse import unquote, urlsplit


def reason(error: BaseException, *urls: str) -> str:
    """The first line of `error` (drivers append SQL and links below it), passwords masked."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:  # a URL too odd to parse holds no password we can find
            continue
        for secret in filter(None, {password, unquote(password or "")}):
            message = message.replace(secret, "***")
    return message
