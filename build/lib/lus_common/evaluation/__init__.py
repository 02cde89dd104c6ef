"""Scores: ``metrics`` (Dice, IoU, pixel accuracy; per image or pooled as an author did),
``biometry`` (head circumference from a mask) and ``stats`` (mean ± sd, ANOVA / Tukey, paired
tests)."""
