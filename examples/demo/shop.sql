-- The demo's sample production database (`scripts/run` with nothing configured): a small shop,
-- five tables with some thousands of rows, and personal data in `customers` that the demo's
-- rules mask. Deterministic: every run of the demo makes the same backup.

CREATE TABLE customers (
    id integer PRIMARY KEY,
    email text NOT NULL UNIQUE,
    first_name text NOT NULL,
    last_name text NOT NULL,
    city text NOT NULL,
    created_at timestamptz NOT NULL
);
COMMENT ON TABLE customers IS 'People who bought something: personal data, masked in the replica';

CREATE TABLE products (
    id integer PRIMARY KEY,
    name text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents > 0)
);

CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    ordered_at timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('paid', 'shipped', 'delivered', 'refunded'))
);
CREATE INDEX orders_customer_id ON orders (customer_id);
CREATE INDEX orders_ordered_at ON orders (ordered_at);

CREATE TABLE order_items (
    order_id integer NOT NULL REFERENCES orders (id),
    product_id integer NOT NULL REFERENCES products (id),
    quantity integer NOT NULL CHECK (quantity > 0),
    price_cents integer NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

INSERT INTO customers
SELECT g,
       lower(n.first) || '.' || lower(n.last) || g || '@mail.example',
       n.first, n.last, n.city,
       timestamptz '2024-01-01 08:00+00' + g * interval '37 minutes'
FROM generate_series(1, 3000) AS g,
LATERAL (SELECT (ARRAY['Alice', 'Bruno', 'Chloe', 'David', 'Emma', 'Farid', 'Gaelle', 'Hugo',
                       'Ines', 'Jules'])[1 + g % 10] AS first,
                (ARRAY['Martin', 'Bernard', 'Dubois', 'Thomas', 'Robert', 'Richard', 'Petit',
                       'Durand'])[1 + (g / 10) % 8] AS last,
                (ARRAY['Paris', 'Lyon', 'Nantes', 'Lille', 'Bordeaux', 'Marseille'])[1 + g % 6]
                    AS city) AS n;

INSERT INTO products
SELECT g, 'Product ' || g || ' ' || md5(g::text), 100 + (g * 7919) % 9900
FROM generate_series(1, 200) AS g;

INSERT INTO orders
SELECT g, 1 + (g * 7919) % 3000,
       timestamptz '2024-02-01 00:00+00' + g * interval '11 minutes',
       (ARRAY['paid', 'shipped', 'delivered', 'delivered', 'refunded'])[1 + g % 5]
FROM generate_series(1, 12000) AS g;

INSERT INTO order_items
SELECT o, 1 + (o * 31 + k * 67) % 200, 1 + (o + k) % 4, 100 + (o * k * 13) % 9900
FROM generate_series(1, 12000) AS o, generate_series(1, 3) AS k;

-- The bulk of the backup (about 2 MiB of it): enough for the download's progress to show.
CREATE TABLE page_views (
    id bigint PRIMARY KEY,
    customer_id integer REFERENCES customers (id),
    session text NOT NULL,
    path text NOT NULL,
    viewed_at timestamptz NOT NULL
);
INSERT INTO page_views
SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 1 + (g::bigint * 104729) % 3000 END,
       md5(g::text) || md5((g * 7)::text),
       '/products/' || (1 + (g * 31) % 200) || '?ref=' || substr(md5((g * 13)::text), 1, 12),
       timestamptz '2024-03-01 00:00+00' + g * interval '53 seconds'
FROM generate_series(1, 30000) AS g;

CREATE VIEW customer_totals AS
SELECT c.id, c.city, count(DISTINCT o.id) AS orders, sum(i.quantity * i.price_cents) AS spent_cents
FROM customers c
JOIN orders o ON o.customer_id = c.id
JOIN order_items i ON i.order_id = o.id
GROUP BY c.id, c.city;
