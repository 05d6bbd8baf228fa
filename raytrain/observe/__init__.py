"""Watching a run: its Ray metrics (declared in `ray_metrics`), the experiment trackers (`trackers`), the
console's progress (`console`) and the training curves (`curves`). Training, evaluation and the actors
all import it, so it sits with the lowest Ray-side layers and imports only `raytrain.config`."""
