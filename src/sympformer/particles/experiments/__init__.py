"""Particle experiments behind `sympformer particles`: converge, preserve, animate, svgd. Each writes CSV,
PNG (GIF where motion helps) and a markdown summary into its output folder."""

from sympformer.particles.experiments import animate, converge, preserve, svgd

__all__ = ["animate", "converge", "preserve", "svgd"]
