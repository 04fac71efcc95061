"""Making datasets: scripted robosuite demonstrations (robomimic layout) and Minari datasets recorded from an env."""
