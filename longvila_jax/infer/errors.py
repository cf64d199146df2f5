"""Errors of inference and evaluation inputs."""


class InputError(ValueError):
    """A user input (video, prompt, option, file) that cannot be used; the message names it and the fix."""
