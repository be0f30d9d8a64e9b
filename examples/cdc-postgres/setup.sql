CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), status text,
                     updated_at timestamptz DEFAULT now());
INSERT INTO orders (id, customer, amount, status)
SELECT i, 'customer ' || (i % 17), round((random() * 500)::numeric, 2), 'placed' FROM generate_series(1, 1000) AS i;
