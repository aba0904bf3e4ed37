"""What counts as a secret: environment names that say so, and the shapes of common API keys.

The bus redacts these from every event, and the shell tool strips them from the environment
it hands to commands, so neither the log nor an agent ever sees a provider key.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(
    # AUTH only as a word: not GIT_AUTHOR_EMAIL, XAUTHORITY or SSH_AUTH_SOCK (a socket path).
    r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|AUTHORIZATION"
    r"|(^|_)AUTH($|_(?!SOCK))|(^|_)PAT$",
    re.IGNORECASE,
)
# Provider settings litellm reads that carry access without saying so in their names.
PROVIDER_SECRETS = frozenset({"AZURE_AD_TOKEN_PROVIDER", "VERTEXAI_CREDENTIALS", "CLARIFAI_PAT"})
_MIN_SECRET_LEN = 8

# Key shapes worth redacting even when they did not come from our environment (a key an agent
# read from a file, or one a tool printed).
KEY_SHAPES = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35})"
)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) or name in PROVIDER_SECRETS


def secrets_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Values of environment variables whose names say they are secret, longest first."""
    env = dict(os.environ) if env is None else env
    found = {
        value: name
        for name, value in env.items()
        if is_secret_name(name) and len(value) >= _MIN_SECRET_LEN
    }
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def scrubbed_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a command an agent runs: everything but the secrets."""
    env = dict(os.environ) if env is None else env
    return {k: v for k, v in env.items() if not is_secret_name(k)}
