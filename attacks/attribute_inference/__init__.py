"""Attribute inference: from a person's other attributes and what a model reveals about them, infer a
sensitive one (sex, a diagnosis, a site, a clinical value) better than those attributes alone allow."""
