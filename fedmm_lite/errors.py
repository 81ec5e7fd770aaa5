"""Named errors for expected bad input. The command line turns them into one line on stderr."""


class FedmmError(Exception):
    """Base class: an expected problem with the user's input, with a message that says what to do."""


class DatasetError(FedmmError):
    """A dataset folder is malformed. The message names the file, the row (when there is one) and
    the problem, e.g. ``items.csv row 7: duplicate item_id 'B0001'``."""


class OptionError(FedmmError):
    """A command-line option or configuration value is invalid (names the option)."""
