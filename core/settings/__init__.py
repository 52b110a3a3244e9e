"""One settings model per stage section of cdp.yaml; core.config assembles them."""
