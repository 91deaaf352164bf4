"""Math answers against a table written here: equivalent forms, wrong answers, no answer."""

import pytest

from rewards.builtin import math_answer

TABLE = [
    # response, ground truth, expected reward
    ("The answer is \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", 1.0),
    ("so \\boxed{0.5}.", "\\frac{1}{2}", 1.0),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{3}", "\\frac{1}{2}", 0.0),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", 1.0),
    ("Natalia sold 48 clips in April and 24 in May, 72 in total.\n#### 72", "#### 72", 1.0),
    ("She earns 1,000 dollars", "1000", 1.0),
    ("The total is 72.", "72", 1.0),
    ("The total is 71.", "72", 0.0),
    ("#### 12.50", "12.5", 1.0),
    ("I do not know.", "72", 0.0),
    ("", "\\boxed{3}", 0.0),
]


@pytest.mark.parametrize("response, truth, expected", TABLE)
def test_math_answer_table(response, truth, expected):
    assert math_answer("q", response, truth)["reward"] == expected


def test_no_answer_is_flagged():
    assert math_answer("q", "I do not know.", "72") == {"reward": 0.0, "has_answer": 0.0}
